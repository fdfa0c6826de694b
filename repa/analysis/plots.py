"""PNG plots of an analysis report (the dict ``repa.analysis.run.run_analysis`` writes as analysis.json).

- ``alignment_per_layer.png``: CKNNA with the encoder against the block index, one line per checkpoint;
- ``alignment_over_steps.png``: CKNNA at the alignment depth (and the best block) against the training step, one
  line per run, written only when some run has checkpoints at two or more steps;
- ``probe_per_layer.png``: linear-probe accuracy against the block index, with the encoder's own as a reference.
"""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")          # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, ax, path: Path) -> str:
    """Grid, legend, integer ticks on the x axis (blocks and steps are whole numbers), then the PNG file."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def checkpoint_label(entry: dict) -> str:
    """Short legend text: the run's folder name and the step."""
    name = Path(entry["run"]).name or entry["run"]
    return f"{name} @ {entry['step']}" if entry.get("step") is not None else name


def write_plots(report: dict, out: str, metric: str = "cknna") -> list[str]:
    """Write the plots of ``report`` into ``out``; returns the written file paths."""
    plt = _pyplot()
    out = Path(out)
    written = []
    entries = report["checkpoints"]
    encoder = report["encoder"]["name"]
    t = report["settings"]["t"]

    fig, ax = plt.subplots(figsize=(6, 4))
    for entry in entries:
        ax.plot([r["layer"] for r in entry["layers"]], [r[metric] for r in entry["layers"]], marker="o",
                label=checkpoint_label(entry))
    ax.set(xlabel="block", ylabel=f"{metric.upper()} with {encoder}", title=f"Alignment per block (t = {t})")
    written.append(_save(plt, fig, ax, out / "alignment_per_layer.png"))

    curves = report.get("training_curves") or []
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for curve in curves:
            name = Path(curve["run"]).name or curve["run"]
            if any(v is not None for v in curve["at_alignment_depth"]):
                line, = ax.plot(curve["steps"], curve["at_alignment_depth"], marker="o",
                                label=f"{name}: block {curve['alignment_depth']}")
                ax.plot(curve["steps"], curve["best_layer_value"], linestyle="--", color=line.get_color(),
                        label=f"{name}: best block")
            else:
                ax.plot(curve["steps"], curve["best_layer_value"], marker="o", label=f"{name}: best block")
        ax.set(xlabel="training step", ylabel=f"{metric.upper()} with {encoder}",
               title=f"Alignment over training (t = {t})")
        written.append(_save(plt, fig, ax, out / "alignment_over_steps.png"))

    if any("probe_accuracy" in r for entry in entries for r in entry["layers"]):
        fig, ax = plt.subplots(figsize=(6, 4))
        for entry in entries:
            ax.plot([r["layer"] for r in entry["layers"]], [r.get("probe_accuracy") for r in entry["layers"]],
                    marker="o", label=checkpoint_label(entry))
        if "probe" in report["encoder"]:
            ax.axhline(report["encoder"]["probe"]["best_accuracy"], color="gray", linestyle=":",
                       label=f"{encoder} (encoder)")
        ax.set(xlabel="block", ylabel="linear probe accuracy (held out)", title=f"Linear probe per block (t = {t})")
        written.append(_save(plt, fig, ax, out / "probe_per_layer.png"))
    return written


__all__ = ["write_plots", "checkpoint_label"]
