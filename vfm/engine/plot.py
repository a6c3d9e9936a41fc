"""Training curves from a run's metrics.jsonl: one subplot per metric, written as a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vfm.errors import ConfigError, VfmError
from vfm.paths import check_output_folder

# Bookkeeping that `MetricsLogger` writes on every train line but that makes no useful curve.
SKIPPED_BY_DEFAULT = ("eta_s", "epoch")
SPLIT_ORDER = ("train", "val")


class MetricsFileError(VfmError):
    """A metrics.jsonl file is missing, empty or malformed, or lacks the requested metrics."""


Series = dict[str, tuple[list[int], list[float]]]  # "split/key" -> (steps, values)


SENTINEL = -1.0  # what evaluators report for a metric without data (COCO's APs/APm/APl with no such objects)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; an error names the file and line of any malformed record."""
    path = Path(path)
    if not path.is_file():
        raise MetricsFileError(f"{path}: metrics file not found")
    records = []
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise MetricsFileError(
                    f"{path}:{number}: malformed JSON ({error.msg} at column {error.colno})"
                ) from error
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(step, int) or isinstance(step, bool):
                raise MetricsFileError(
                    f"{path}:{number}: expected an object with an integer 'step', got {line.strip()[:80]!r}"
                )
            records.append(record)
    if not records:
        raise MetricsFileError(f"{path}: no metrics records (the file is empty)")
    return records


def collect_series(records: list[dict[str, Any]]) -> Series:
    """Numeric values per `split/key`, sorted by step.

    metrics.jsonl is appended to across resumes, so a step may be logged twice; the later record wins. Evaluation
    values equal to `SENTINEL` (-1: no data for that metric) are left out.
    """
    by_step: dict[str, dict[int, float]] = {}
    for record in records:
        split = str(record.get("split", "train"))
        for key, value in record.items():
            if key in ("step", "split") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if split != "train" and value == SENTINEL:  # COCO's "no objects of this size": not a value to plot
                continue
            by_step.setdefault(f"{split}/{key}", {})[record["step"]] = float(value)
    split_rank = {split: rank for rank, split in enumerate(SPLIT_ORDER)}
    names = sorted(by_step, key=lambda name: split_rank.get(name.split("/", 1)[0], len(SPLIT_ORDER)))  # stable
    return {name: (sorted(by_step[name]), [by_step[name][s] for s in sorted(by_step[name])]) for name in names}


def select_series(series: Series, keys: list[str] | None, source: str) -> Series:
    """The series `keys` names (`loss` matches every split's loss, `val/loss` only one); default: all but bookkeeping."""
    if not keys:
        chosen = {name: points for name, points in series.items() if name.split("/", 1)[-1] not in SKIPPED_BY_DEFAULT}
        return chosen or series
    chosen = {}
    for key in keys:
        matches = [name for name in series if key in (name, name.split("/", 1)[-1])]
        if not matches:
            raise MetricsFileError(f"{source}: no metric {key!r}; available: {', '.join(series)}")
        chosen.update({name: series[name] for name in matches})
    return chosen


def plot_metrics(
    path: str | Path, out: str | Path | None = None, keys: list[str] | None = None
) -> tuple[Path, list[str]]:
    """Plot `path` (a metrics.jsonl, or a run's work dir holding one) into `out` (default: metrics.png beside it).

    Returns the image path and the plotted series names (`train/loss`, `val/accuracy`, ...), one subplot each.
    """
    from matplotlib.figure import Figure  # Figure needs no pyplot and no global backend: it renders with Agg

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    chosen = select_series(collect_series(read_metrics(path)), keys, str(path))
    out = Path(out) if out is not None else path.with_suffix(".png")
    check_output_folder(out.parent, "--out")
    if out.is_dir():
        raise ConfigError(f"--out: got {str(out)!r}, expected an image file name (it is a folder)")

    columns = min(3, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    figure = Figure(figsize=(4.5 * columns, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, (name, (steps, values)) in zip(axes, chosen.items(), strict=False):  # spare axes are hidden below
        # Evaluations are sparse: mark their points so a single one still shows.
        ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name.endswith("/lr"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes[len(chosen) :]:
        ax.set_visible(False)
    figure.suptitle(str(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out, list(chosen)


__all__ = ["MetricsFileError", "collect_series", "plot_metrics", "read_metrics", "select_series"]
