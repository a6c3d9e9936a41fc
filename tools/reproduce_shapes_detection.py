#!/usr/bin/env python
"""Deformable DETR vs the dense-attention DETR control on the shapes set at an equal CPU budget.

Trains every (model, seed) with tools/train.py, reads each run's metrics.jsonl and writes a PNG of AP50 / AP /
AP_small against steps (mean over seeds, min-max band) and a JSON summary beside it:

    python tools/reproduce_shapes_detection.py --out runs/shapes_repro          # 3 seeds x 2 models, ~45 min
    python tools/reproduce_shapes_detection.py --seeds 0 --steps 1000 --out /tmp/quick
    python tools/reproduce_shapes_detection.py --models deformable_detr,deformable_refine,deformable_k1,\
        deformable_single_scale --seeds 0 --out runs/shapes_repro                # one-change ablations
    python tools/reproduce_shapes_detection.py --out runs/shapes_repro --summarize-only

The shapes set is generated under --data when it is missing (2000 train / 200 val images, seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFORMABLE = REPO / "configs" / "deformable_detr" / "deformable_detr_tiny_shapes.yaml"
# name: (config, overrides). The ablations change one thing of the tiny Deformable DETR each.
MODELS = {
    "deformable_detr": (DEFORMABLE, []),
    "detr": (REPO / "configs" / "detr" / "detr_tiny_shapes.yaml", []),
    "deformable_refine": (DEFORMABLE, ["objective.with_box_refine=true"]),
    "deformable_k1": (DEFORMABLE, ["objective.num_points=1"]),
    "deformable_single_scale": (DEFORMABLE, ["objective.backbone.out_indices=[2]", "objective.num_feature_levels=1"]),
}
LABELS = {
    "deformable_detr": "Deformable DETR (tiny)",
    "detr": "DETR control (dense attention)",
    "deformable_refine": "+ iterative box refinement",
    "deformable_k1": "1 sampling point (K=1)",
    "deformable_single_scale": "single scale (8x8 only)",
}
METRICS = ("bbox_AP50", "bbox_AP", "bbox_APs", "bbox_APm")


def val_curve(work_dir: Path) -> dict[int, dict[str, float]]:
    """{step: val metrics} from a run's metrics.jsonl."""
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: {k: r[k] for k in METRICS} for r in records if r.get("split") == "val"}


def summarize(curves: dict[str, dict[int, dict[int, dict[str, float]]]]) -> dict:
    """Mean/min/max over seeds per model, step and metric, plus the claims the reproduction checks."""
    summary: dict = {"models": {}}
    for model, by_seed in curves.items():
        steps = sorted(set.intersection(*(set(curve) for curve in by_seed.values())))
        rows = []
        for step in steps:
            row = {"step": step}
            for metric in METRICS:
                values = [by_seed[seed][step][metric] for seed in by_seed]
                row[metric] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
            rows.append(row)
        summary["models"][model] = {"seeds": sorted(by_seed), "curve": rows, "final": rows[-1]}
    if {"deformable_detr", "detr"} <= curves.keys():
        deformable, dense = summary["models"]["deformable_detr"], summary["models"]["detr"]
        target = dense["final"]["bbox_AP50"]["mean"]
        reached = next((r["step"] for r in deformable["curve"] if r["bbox_AP50"]["mean"] >= target), None)
        summary["claims"] = {
            "detr_final_AP50": target,
            "deformable_step_reaching_detr_final_AP50": reached,
            "fraction_of_budget": None if reached is None else reached / dense["final"]["step"],
            "final_gain": {m: deformable["final"][m]["mean"] - dense["final"][m]["mean"] for m in METRICS},
        }
    return summary


def plot(summary: dict, path: Path) -> None:
    """Three panels (AP50, AP, AP_small) against steps, one line per model with its seed band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, ("bbox_AP50", "bbox_AP", "bbox_APs"), strict=True):
        for model, data in summary["models"].items():
            steps = [r["step"] for r in data["curve"]]
            mean = [100 * r[metric]["mean"] for r in data["curve"]]
            low, high = [100 * r[metric]["min"] for r in data["curve"]], [100 * r[metric]["max"] for r in data["curve"]]
            label = LABELS[model]
            ax.plot(steps, mean, marker="o", markersize=3, label=f"{label}, {len(data['seeds'])} seeds")
            ax.fill_between(steps, low, high, alpha=0.2)
        ax.set_title(metric.replace("bbox_", "") + " on shapes val (200 images)")
        ax.set_xlabel("optimizer steps (batch 8)")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "shapes")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "shapes_repro", help="run folders and summary")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--models", default="deformable_detr,detr", help=f"comma-separated subset of {list(MODELS)}")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG path (default OUT/shapes_repro.png); the summary JSON is written beside it")
    parser.add_argument("--summarize-only", action="store_true", help="only read finished runs and plot")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"error: --models: unknown {unknown}, expected a subset of {list(MODELS)}", file=sys.stderr)
        return 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not args.summarize_only:
        if not (args.data / "annotations" / "val.json").is_file():
            subprocess.run([sys.executable, str(REPO / "tools" / "make_shapes_dataset.py"), str(args.data),
                            "--train", "2000", "--val", "200"], check=True, env=env, stdout=subprocess.DEVNULL)
        for seed in seeds:
            for model in models:
                work = args.out / f"{model}_seed{seed}"
                print(f"training {model} seed {seed} -> {work}", flush=True)
                config, overrides = MODELS[model]
                subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), str(config), *overrides,
                                f"data.root={args.data}", f"seed={seed}", f"train.max_steps={args.steps}",
                                f"work_dir={work}", "resume=auto", "train.progress_bar=never"],
                               check=True, env=env, stdout=subprocess.DEVNULL)
    curves = {m: {s: val_curve(args.out / f"{m}_seed{s}") for s in seeds} for m in models}
    summary = summarize(curves)
    summary["command"] = " ".join(["python", *sys.argv])
    png = args.plot or args.out / "shapes_repro.png"
    plot(summary, png)
    png.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    for model, data in summary["models"].items():
        final = data["final"]
        print(f"{model:>16} step {final['step']}: " + ", ".join(
            f"{m.replace('bbox_', '')} {100 * final[m]['mean']:.1f} [{100 * final[m]['min']:.1f}-{100 * final[m]['max']:.1f}]"
            for m in METRICS))
    if "claims" in summary:
        print(json.dumps(summary["claims"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
