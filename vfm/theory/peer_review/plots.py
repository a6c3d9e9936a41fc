"""PNG figures of sweeps. matplotlib is imported only here and only when a figure is drawn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gap_closed(rows: Sequence[dict], x_key: str, group_key: str, path: str | Path, x_label: str) -> Path:
    """Gap closed (+- 2 SE) against `x_key`, one line per value of `group_key`; rows are `CellResult.to_dict()`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    groups = sorted({row["setting"][group_key] for row in rows})
    for group in groups:
        mine = sorted((r for r in rows if r["setting"][group_key] == group), key=lambda r: r["setting"][x_key])
        xs = [r["setting"][x_key] for r in mine]
        ax.errorbar(xs, [r["gap_closed"]["value"] for r in mine], yerr=[2 * r["gap_closed"]["se"] for r in mine],
                    marker="o", capsize=3, label=f"{group_key.replace('_', ' ')} = {group:g}")
    ax.axhline(0.4, color="grey", linestyle="--", linewidth=1, label="40% (paper's claim, n > 3)")
    ax.set_xlabel(x_label)
    ax.set_ylabel("gap closed (S - P) / (I - P)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_burden(rows: Sequence[dict], path: str | Path) -> Path:
    """Relative review burden against papers per author, one line per prior mean."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for mean in sorted({row["prior_mean"] for row in rows}):
        mine = sorted((r for r in rows if r["prior_mean"] == mean), key=lambda r: r["papers"])
        ax.plot([r["papers"] for r in mine], [r["relative_burden"] for r in mine], marker="o",
                label=f"prior mean = {mean:g}")
    ax.set_xlabel("papers per author n")
    ax.set_ylabel("E[#reviews] / n at parallel's best utility")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_threshold_curves(thresholds: Sequence[float], curves: dict[str, Sequence[float]], path: str | Path,
                          title: str) -> Path:
    """Expected conference utility against the acceptance threshold, one line per mechanism."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, values in curves.items():
        ax.plot(thresholds, values, label=name)
    ax.set_xlabel("threshold t (sequential: t_rev = t_acc = t)")
    ax.set_ylabel("E[sum of accepted quality]")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
