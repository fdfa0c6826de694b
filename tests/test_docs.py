"""The documentation stays true to the repository: its links resolve, the ``docs/*.md`` files the code cites exist,
and the sampling defaults it quotes are ``repa.SampleConfig``'s."""
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
    """One case per source file. Known failure until the command line is fixed: ``repa/cli.py`` and
    ``repa/commands.py`` cite ``docs/EVAL.md``, which does not exist; the page is ``docs/EVALUATION.md``."""
    missing = sorted({p for p in DOC_PATH.findall(source.read_text(encoding="utf-8")) if not (REPO / p).exists()})
    # KNOWN FAILURE (repa/cli.py, repa/commands.py): they cite docs/EVAL.md; the fix is theirs, docs/EVALUATION.md
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


# ---- the sampling defaults the docs quote -------------------------------------------------------------------------

# Every page that states the defaults of repa.sample / repa.SampleConfig writes them as
# `repa.SampleConfig()` ... `sampler="auto"`, `steps=250` (this pattern); each must equal the dataclass.
QUOTED_DEFAULTS = re.compile(r'SampleConfig\(\)`[^`]{0,40}?`sampler="(\w+)"`,\s+`steps=(\d+)`')
PAGES_QUOTING_DEFAULTS = ["README.md", "docs/CONTRACTS.md", "docs/DIT.md", "docs/EVALUATION.md"]


@pytest.mark.parametrize("page", PAGES_QUOTING_DEFAULTS)
def test_the_quoted_sampling_defaults_are_sample_configs(page):
    text = (REPO / page).read_text(encoding="utf-8")
    quoted = QUOTED_DEFAULTS.findall(text)
    assert quoted, f"{page} no longer quotes the sampling defaults as `repa.SampleConfig()`: `sampler=...`, `steps=...`"
    defaults = SampleConfig()
    assert set(quoted) == {(defaults.sampler, str(defaults.steps))}, page


def test_no_other_page_quotes_sampling_defaults_unchecked():
    pages = {_rel(p) for p in MARKDOWN if QUOTED_DEFAULTS.search(p.read_text(encoding="utf-8"))}
    assert pages <= set(PAGES_QUOTING_DEFAULTS), pages - set(PAGES_QUOTING_DEFAULTS)


def test_the_sample_options_table_shows_sample_configs_defaults():
    text = (REPO / "docs" / "EVALUATION.md").read_text(encoding="utf-8")
    row = {name: re.search(rf"^\| `--{name}` \| `?([^`|]+?)`? \|", text, re.M) for name in ("sampler", "steps",
                                                                                              "cfg-scale")}
    assert all(row.values()), row
    defaults = SampleConfig()
    assert (row["sampler"].group(1), row["steps"].group(1), row["cfg-scale"].group(1)) == (
        defaults.sampler, str(defaults.steps), str(defaults.cfg_scale))
