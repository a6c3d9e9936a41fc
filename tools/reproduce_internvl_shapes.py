#!/usr/bin/env python
"""InternVL's progressive alignment on the captioned shapes: stage 1 (contrastive, both towers from scratch), then
stage 2 (towers frozen and loaded from stage 1; queries + cross-attention trained with ITC + ITM + ITG). Trains both
with tools/train.py, prints sample captions of held-out images, and writes a PNG of the curves and a JSON summary
with the paper's numbers beside ours:

    python tools/reproduce_internvl_shapes.py --out runs/internvl_repro          # 300 + 1000 steps at batch 64
    python tools/reproduce_internvl_shapes.py --out runs/internvl_repro --summarize-only

The captioned set is generated under --data when missing (20000 train / 1000 val images, seed 0).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = {"stage1": REPO / "configs" / "internvl" / "stage1_tiny_shapes.yaml",
          "stage2": REPO / "configs" / "internvl" / "stage2_tiny_shapes.yaml"}
CHANCE = {"zeroshot": 1 / 18, "i2t_r1": 1 / 1000, "class_match": 1 / 18}
# The paper's Flickr30K and COCO R@1 (InternVL-C vs InternVL-G, README of the official repository).
PAPER = {"flickr30k_i2t_r1": {"C": 94.7, "G": 95.7}, "flickr30k_t2i_r1": {"C": 81.7, "G": 85.0},
         "coco_i2t_r1": {"C": 70.6, "G": 74.9}, "coco_t2i_r1": {"C": 54.1, "G": 58.6},
         "retrieval_mean_recall": {"C": 86.6, "G": 88.8}}


@functools.cache
def _all_series(metrics: Path) -> dict[str, tuple[list[int], list[float]]]:
    from vfm.engine.plot import collect_series, read_metrics

    return collect_series(read_metrics(metrics))  # a file read once, however many metrics are asked of it


def series(metrics: Path, split: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric of a run (a step logged twice, after a resume, keeps its last value)."""
    return _all_series(metrics).get(f"{split}/{key}", ([], []))


def last(metrics: Path, split: str, key: str) -> float | None:
    """The final value of one metric (None when never logged)."""
    return (series(metrics, split, key)[1] or [None])[-1]


def sample_captions(work: Path, data: Path, count: int) -> list[dict[str, str]]:
    """Greedy captions of the first `count` validation images, beside their reference captions."""
    import itertools

    import torch

    from vfm.config import load_config
    from vfm.engine.evaluate import load_objective
    from vfm.registry import DATASETS

    cfg = load_config(work / "config.yaml")
    model = load_objective(cfg, str(work / "model.safetensors"))
    samples = list(itertools.islice(iter(DATASETS.build(cfg.eval.sets.zeroshot.dataset, "dataset")), count))
    classes = json.loads((data / "classes.json").read_text())["classes"]
    captions = model.generate(torch.stack([s["image"] for s in samples]), max_new_tokens=24)
    return [{"class": classes[int(s["label"])], "reference": s["text"], "generated": c}
            for s, c in zip(samples, captions, strict=True)]


def main() -> int:
    """Run the missing stages, then plot and summarize."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "shapes_captions")
    parser.add_argument("--stage1-steps", type=int, default=300)
    parser.add_argument("--stage2-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()
    common = [f"data.root={args.data}", f"data.batch_size={args.batch_size}", "checkpoint.overwrite=true",
              "train.progress_bar=never"]
    if not args.summarize_only:
        if not (args.data / "classes.json").exists():
            subprocess.run([sys.executable, REPO / "tools" / "make_shapes_captions.py", args.data], check=True)
        stage1, stage2 = args.out / "stage1", args.out / "stage2"
        if not (stage1 / "model.safetensors").exists():
            subprocess.run([sys.executable, REPO / "tools" / "train.py", STAGES["stage1"], f"work_dir={stage1}",
                            f"train.max_steps={args.stage1_steps}", "eval.interval=100", *common], check=True)
        if not (stage2 / "model.safetensors").exists():
            subprocess.run([sys.executable, REPO / "tools" / "train.py", STAGES["stage2"], f"work_dir={stage2}",
                            f"train.max_steps={args.stage2_steps}", f"eval.interval={max(50, args.stage2_steps // 4)}",
                            f"load_from={stage1 / 'model.safetensors'}", *common], check=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m1, m2 = args.out / "stage1" / "metrics.jsonl", args.out / "stage2" / "metrics.jsonl"
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    offset = max(series(m1, "train", "loss")[0] or [0])
    for split, label in [("val/retrieval_c", "C path (stage-1 features)"), ("val/retrieval", "G path (C + queries)"),
                         ("val/retrieval_q", "query path alone")]:
        steps, values = series(m2, split, "i2t_r1")
        axes[0].plot([offset + s for s in steps], values, marker="o", label=f"stage 2, {label}")
    steps, values = series(m1, "val/retrieval", "i2t_r1")
    axes[0].plot(steps, values, marker="o", label="stage 1, C path")
    axes[0].set_title("image->text R@1 (1000 captions)")
    steps, values = series(m1, "val/zeroshot", "accuracy")
    axes[1].plot(steps, values, marker="o", label="stage 1 (C)")
    steps, values = series(m2, "val/zeroshot", "accuracy")
    axes[1].plot([offset + s for s in steps], values, marker="o", label="stage 2 (G)")
    steps, values = series(m2, "val/captions", "class_match")
    axes[1].plot([offset + s for s in steps], values, marker="s", label="stage 2 captions naming the class")
    axes[1].axhline(1 / 18, color="grey", linestyle="--", label="chance (1/18)")
    axes[1].set_title("zero-shot accuracy / caption class match")
    for key in ("loss_itc", "loss_itm", "loss_itg"):
        steps, values = series(m2, "train", key)
        axes[2].plot([offset + s for s in steps], values, label=f"stage 2 {key}")
    steps, values = series(m1, "train", "loss_itc")
    axes[2].plot(steps, values, label="stage 1 loss_itc")
    axes[2].set_title("training losses")
    for axis in axes:
        axis.set_xlabel("step (stage 2 continues after stage 1)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(args.out / "internvl_shapes.png", dpi=100)

    summary: dict = {"stage1": {k: last(m1, s, key) for k, (s, key) in {
        "zeroshot/accuracy": ("val/zeroshot", "accuracy"), "retrieval/i2t_r1": ("val/retrieval", "i2t_r1"),
        "retrieval/t2i_r1": ("val/retrieval", "t2i_r1"), "retrieval/mean_recall": ("val/retrieval", "mean_recall"),
        "linear_probe/accuracy": ("val/linear_probe", "accuracy")}.items()}}
    summary["stage2"] = {f"{s.removeprefix('val/')}/{key}": last(m2, s, key) for s, key in [
        ("val/zeroshot", "accuracy"), ("val/zeroshot_c", "accuracy"),
        ("val/retrieval", "i2t_r1"), ("val/retrieval", "t2i_r1"), ("val/retrieval", "mean_recall"),
        ("val/retrieval_c", "i2t_r1"), ("val/retrieval_c", "t2i_r1"), ("val/retrieval_c", "mean_recall"),
        ("val/retrieval_q", "i2t_r1"), ("val/retrieval_q", "t2i_r1"), ("val/retrieval_q", "mean_recall"),
        ("val/captions", "class_match"), ("val/captions", "word_match"), ("val/captions", "distinct")]}
    summary["chance"], summary["paper"] = CHANCE, PAPER
    summary["captions"] = sample_captions(args.out / "stage2", args.data, 8)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
