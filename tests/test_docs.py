"""The documentation stays true to the repository: its links resolve, the ``docs/*.md`` files the code cites exist,
the defaults it quotes are the dataclasses' (``TrainConfig``, ``SampleConfig``), and the README's Python example runs."""
import re
from pathlib import Path

import pytest

from repa.config import SampleConfig

REPO = Path(__file__).resolve().parents[1]
MARKDOWN = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
SOURCES = sorted(path for path in (REPO / "repa").rglob("*.py") if "docs/" in path.read_text(encoding="utf-8"))

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")      # [text](target) and ![alt](target)
DOC_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*\w\.md\b")               # docs/NAME.md written out in text or code
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for line in FENCE.sub("", markdown.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            if seen[slug]:
                seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def _broken_links(markdown: Path) -> list[str]:
    text = markdown.read_text(encoding="utf-8")
    broken, targets = [], LINK.findall(FENCE.sub("", text))
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):                   # https:, mailto:: not checked offline
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (markdown.parent / file_part).resolve() if file_part else markdown
        if not resolved.exists():
            shown = resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else resolved
            broken.append(f"{target}: no file {shown}")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: {_rel(resolved)} has no heading with anchor #{anchor}")
    mentioned = set(DOC_PATH.findall(text)) - {target.partition("#")[0] for target in targets}   # (links: above)
    broken += [f"{path}: no such file" for path in sorted(mentioned) if not (REPO / path).exists()]
    return broken


@pytest.mark.parametrize("markdown", MARKDOWN, ids=_rel)
def test_every_relative_link_in_the_docs_resolves(markdown):
    assert _broken_links(markdown) == []


@pytest.mark.parametrize("source", SOURCES, ids=_rel)
def test_the_docs_files_cited_in_the_code_exist(source):
    """One case per source file (``docs/EVAL.md`` was once cited for ``docs/EVALUATION.md``)."""
    missing = sorted({p for p in DOC_PATH.findall(source.read_text(encoding="utf-8")) if not (REPO / p).exists()})
    assert missing == [], f"{_rel(source)} cites {missing}, which do not exist (the evaluation page: docs/EVALUATION.md)"


def test_the_link_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "A.md").write_text("# The `repa sample` page\n\n## Two: words\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/A.md#the-repa-sample-page) [ok](docs/A.md#two-words) [web](https://x.org/y)\n"
                    "[gone](docs/B.md) [anchor](docs/A.md#three) see docs/C.md\n```\n[in code](docs/D.md)\n```\n")
    assert _broken_links(page) == ["docs/B.md: no file docs/B.md",
                                   "docs/A.md#three: docs/A.md has no heading with anchor #three",
                                   "docs/C.md: no such file", "docs/D.md: no such file"]


# ---- the defaults the docs quote ----------------------------------------------------------------------------------

# A page that states a default of a config field writes it in one of these forms (docs/TESTING.md), each checked
# against the dataclasses (TrainConfig with its sections, SampleConfig):
#   `repa.SampleConfig()`: `sampler="auto"`, `steps=250`      a class's defaults, any fields of it
#   `--sample-steps`, default 50  /  `--sample-steps N` (default 50)   a flag of `repa train` or of the sampling
#        (other commands' flags, such as `--vae`, whose defaults are resolved when they run, are not checked)
#   `objective.class_token_coeff` (default 0.03)  /  the default `ema_decay` (0.9999)   a field by its dotted name
CLASS_DEFAULTS = re.compile(r'`repa\.(\w+)\(\)`:((?:\s*`\w+=[^`]+`,?)+)')
FLAG_DEFAULT = re.compile(r'`(--[\w.-]+)[^`]*`(?:,| \()\s*default:? `?([^\s`),;]+)')
FIELD_DEFAULT = re.compile(r'`([a-z_]+(?:\.[a-z_]+)*)` \(default:? `?([^\s`),;]+)`?\)|default `([a-z_.]+)` \(([^\s),;]+)\)')
QUOTED_DEFAULTS = re.compile(r'SampleConfig\(\)`[^`]{0,40}?`sampler="(\w+)"`,\s+`steps=(\d+)`')


def _config_default(name: str):
    """The default of a field named by its dotted path (``objective.proj_coeff``) or flag (``--sample-steps``)."""
    from repa.config import SampleConfig, TrainConfig
    path = name.lstrip("-").replace("-", "_").split(".")
    for obj in (TrainConfig(), SampleConfig()):
        for part in path:
            obj = getattr(obj, part, KeyError)
        if obj is not KeyError:
            return obj
    raise KeyError(name)


def _same(written: str, default) -> bool:
    import ast
    try:
        value = ast.literal_eval(written.replace("_", ""))
    except (ValueError, SyntaxError):
        value = written
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return value == default or str(value) == str(default)
    return isinstance(value, (int, float)) and abs(value - default) <= 1e-12 * max(1.0, abs(default))


def _quoted_defaults(text: str) -> list[tuple[str, str]]:
    """(name, written value) of every default the text quotes in the documented forms."""
    found = []
    for cls, fields in CLASS_DEFAULTS.findall(text):
        found += [(f"{cls}().{k}", v) for k, v in re.findall(r"`(\w+)=([^`]+)`", fields)]
    found += FLAG_DEFAULT.findall(text)
    found += [(a or c, b or d) for a, b, c, d in FIELD_DEFAULT.findall(text)]
    return found


def _wrong_defaults(text: str) -> list[str]:
    import repa
    wrong = []
    for name, written in _quoted_defaults(text):
        cls, _, field = name.partition("().")
        try:
            default = getattr(getattr(repa, cls)(), field) if field else _config_default(name)
        except (KeyError, AttributeError):
            if name.startswith("--"):
                continue                  # a command's own option, not a config field
            wrong.append(f"{name}: no such config field (quote defaults of TrainConfig / SampleConfig fields only)")
            continue
        if not _same(written, default):
            wrong.append(f"{name}: the docs say {written}, the code {default!r}")
    return wrong


@pytest.mark.parametrize("markdown", MARKDOWN, ids=_rel)
def test_every_default_the_docs_quote_is_the_dataclasses(markdown):
    assert _wrong_defaults(markdown.read_text(encoding="utf-8")) == []


def test_the_default_checker_reads_every_form_and_finds_a_wrong_value():
    text = ('`repa.SampleConfig()`: `sampler="auto"`, `steps=50` and `--sample-steps`, default 50; `--ema-decay X` '
            '(default 0.999), `objective.class_token_coeff` (default 0.03), the default `ema_decay` (0.9999), '
            '`--budget S`, default 450, `objective.no_such` (default 1)')
    assert len(_quoted_defaults(text)) == 8
    assert _wrong_defaults(text) == ["SampleConfig().steps: the docs say 50, the code 250",
                                     "--ema-decay: the docs say 0.999, the code 0.9999",
                                     "objective.no_such: no such config field (quote defaults of TrainConfig / "
                                     "SampleConfig fields only)"]


# The pages that state repa.sample's defaults (the sampling defaults were wrong in two of them once).
PAGES_QUOTING_DEFAULTS = ["README.md", "docs/CONTRACTS.md", "docs/DIT.md", "docs/EVALUATION.md"]


@pytest.mark.parametrize("page", PAGES_QUOTING_DEFAULTS)
def test_the_quoted_sampling_defaults_are_sample_configs(page):
    text = (REPO / page).read_text(encoding="utf-8")
    quoted = QUOTED_DEFAULTS.findall(text)
    assert quoted, f"{page} no longer quotes the sampling defaults as `repa.SampleConfig()`: `sampler=...`, `steps=...`"
    defaults = SampleConfig()
    assert set(quoted) == {(defaults.sampler, str(defaults.steps))}, page


def test_the_sample_options_table_shows_sample_configs_defaults():
    text = (REPO / "docs" / "EVALUATION.md").read_text(encoding="utf-8")
    row = {name: re.search(rf"^\| `--{name}` \| `?([^`|]+?)`? \|", text, re.M) for name in ("sampler", "steps",
                                                                                              "cfg-scale")}
    assert all(row.values()), row
    defaults = SampleConfig()
    assert (row["sampler"].group(1), row["steps"].group(1), row["cfg-scale"].group(1)) == (
        defaults.sampler, str(defaults.steps), str(defaults.cfg_scale))


def test_the_readme_presets_table_names_the_teachers_repa_presets_lists():
    """Vanilla twins keep the encoder in their config (identical projectors) but run no teacher: both say "none"."""
    from repa.presets import PRESETS, describe
    listed = {line.split()[0]: line.split()[-1] for line in describe().splitlines()[1:]}
    table = (REPO / "README.md").read_text(encoding="utf-8").split("## Presets", 1)[1].split("\n\n")[1]
    checked = set()
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        names = [n for n in PRESETS if "-vanilla-" in n] if names == ["*-vanilla-*"] else names
        teachers = [t.replace("none used", "none") for t in cells[-1].split(" / ")]
        for i, name in enumerate(names):
            assert listed[name] == teachers[min(i, len(teachers) - 1)], (name, cells[-1])
            checked.add(name)
    assert checked == set(PRESETS) - {n for n in PRESETS if n.startswith("DiT")} or checked == set(PRESETS)


def test_the_readme_quick_start_commands_parse():
    """Every `repa ...` line of the quick start is a valid command line (train: also a valid config)."""
    import shlex

    from repa.cli import parse_command
    block = (REPO / "README.md").read_text(encoding="utf-8").split("quick start", 1)[1].split("```bash\n", 1)[1]
    lines = [line.split("#")[0] for line in block.split("```", 1)[0].splitlines() if line.startswith("repa ")]
    assert [shlex.split(line)[1] for line in lines] == ["prepare", "train", "sample", "eval"]
    for line in lines:
        command, *argv = shlex.split(line)[1:]
        opts = parse_command(command, argv)
        if command == "train":
            from repa.training import check_config
            check_config(opts.train)
            assert opts.train.data.path == "data/mine" and opts.train.max_steps % opts.train.ckpt_every == 0


# ---- the README's Python example runs -----------------------------------------------------------------------------

def _readme_example() -> str:
    """The first Python block of the README's "Python API" section, as written there."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"^```python\n(.*?)^```", section, re.S | re.M).group(1)


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_the_readme_python_example_writes_pngs_of_1_and_3_channel_models(space, tmp_path, monkeypatch,
                                                                        tiny_vae_dir, one_thread):
    """A 1-channel pixel model (a Fashion-MNIST SiT) and a latent model decoded to RGB by a tiny VAE, both saved as
    checkpoints and read back by the example's own code: only the path, the device and the VAE are substituted."""
    import torch
    from PIL import Image

    from repa.checkpoint import FORMAT, FORMAT_VERSION, atomic_torch_save
    from repa.config import TrainConfig, to_json
    from repa.models import build_model
    from tests.conftest import tiny_model_config
    torch.manual_seed(0)
    net = build_model(tiny_model_config(num_classes=1000, **({"space": "latent", "in_channels": 4}
                                                              if space == "latent" else {})))
    ckpt = tmp_path / "ckpt.pt"
    atomic_torch_save({"format": FORMAT, "format_version": FORMAT_VERSION, "steps": 0, "model": net.state_dict(),
                       "ema": net.state_dict(), "config": to_json(TrainConfig(model=net.config, encoders=()))}, ckpt)
    code = _readme_example()
    path, vae = re.search(r'load_model\("([^"]+)"', code).group(1), re.search(r'vae=("[^"]+")', code).group(1)
    code = code.replace(path, str(ckpt)).replace('device="cuda"', 'device="cpu"')
    code = code.replace(vae, repr(str(tiny_vae_dir)) if space == "latent" else "None")
    code = code.replace("cfg_scale=1.8,", "cfg_scale=1.8, steps=4,")   # 4 steps, not 250: seconds on a CPU
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    pngs = sorted(tmp_path.glob("sample_*.png"))
    assert len(pngs) == 8
    with Image.open(pngs[0]) as image:
        assert (image.mode, image.size) == (("L", (8, 8)) if space == "pixel" else ("RGB", (16, 16)))


def test_to_pil_takes_one_and_three_channels_and_refuses_others():
    import numpy as np

    from repa.visualize import to_pil
    assert to_pil(np.zeros((1, 4, 5), np.uint8)).mode == "L" and to_pil(np.zeros((3, 4, 5), np.uint8)).size == (5, 4)
    assert to_pil(np.full((4, 5, 1), 7, np.uint8), channels_last=True).getpixel((0, 0)) == 7
    with pytest.raises(ValueError, match="uint8 image"):
        to_pil(np.zeros((2, 4, 5), np.uint8))
