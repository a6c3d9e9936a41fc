#!/usr/bin/env python
"""CLIP on the captioned shapes: both towers from scratch vs a locked pretrained MiniLM text tower (LiT) vs SigLIP,
at an equal number of steps. Trains each with tools/train.py, reads the metrics.jsonl files, writes a PNG of
zero-shot accuracy and retrieval mean recall against steps and a JSON summary:

    python tools/reproduce_clip_shapes.py --out runs/clip_repro                  # 3 runs x 300 steps at batch 64
    python tools/reproduce_clip_shapes.py --runs clip,lit --steps 200 --out /tmp/quick
    python tools/reproduce_clip_shapes.py --out runs/clip_repro --summarize-only

The captioned set is generated under --data when missing (20000 train / 1000 val images, seed 0).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "clip": (REPO / "configs" / "clip" / "clip_vit_tiny_shapes.yaml", "CLIP, text tower from scratch"),
    "lit": (REPO / "configs" / "clip" / "lit_minilm_shapes.yaml", "CLIP, locked pretrained MiniLM (LiT)"),
    "siglip": (REPO / "configs" / "clip" / "siglip_vit_tiny_shapes.yaml", "SigLIP, text tower from scratch"),
}
CHANCE = {"zeroshot/accuracy": 1 / 18, "retrieval/i2t_r1": 1 / 1000}
# open_clip's published zero-shot ImageNet-1k top-1 of ViT-B/32 trained on LAION-400M (32 epochs), for scale.
OPEN_CLIP_VIT_B32_LAION400M = 0.629


def series(metrics: Path, split: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric of a run; a step logged twice (resume) keeps its last value."""
    values = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == split and key in record:
            values[record["step"]] = record[key]
    return sorted(values), [values[s] for s in sorted(values)]


def main() -> int:
    """Run the missing trainings, then plot and summarize."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "shapes_captions")
    parser.add_argument("--runs", default="clip,lit,siglip")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()
    names = args.runs.split(",")
    if unknown := [n for n in names if n not in RUNS]:
        parser.error(f"--runs: unknown {unknown[0]!r}, expected some of {', '.join(RUNS)}")
    if not args.summarize_only:
        if not (args.data / "classes.json").exists():
            subprocess.run([sys.executable, REPO / "tools" / "make_shapes_captions.py", args.data], check=True)
        for name in names:
            work = args.out / name
            if (work / "model.safetensors").exists():
                continue
            subprocess.run([sys.executable, REPO / "tools" / "train.py", RUNS[name][0], f"work_dir={work}",
                            f"data.root={args.data}", f"train.max_steps={args.steps}", "eval.interval=100",
                            f"data.batch_size={args.batch_size}",
                            "checkpoint.interval=100", "checkpoint.overwrite=true", "train.progress_bar=never"], check=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    summary = {}
    for name in names:
        metrics = args.out / name / "metrics.jsonl"
        final = {}
        for axis, (split, key, title) in zip(axes, [("val/zeroshot", "accuracy", "zero-shot accuracy (18 classes)"),
                                                    ("val/retrieval", "i2t_r1", "image->text R@1 (1000 captions)"),
                                                    ("train", "loss", "training loss")], strict=True):
            steps, values = series(metrics, split, key)
            axis.plot(steps, values, marker="o" if split != "train" else None, label=RUNS[name][1])
            axis.set_title(title)
            axis.set_xlabel("step")
            final[f"{split.removeprefix('val/')}/{key}"] = values[-1] if values else None
        _, probe = series(metrics, "val/linear_probe", "accuracy")
        final["linear_probe/accuracy"] = probe[-1] if probe else None
        _, mean_recall = series(metrics, "val/retrieval", "mean_recall")
        final["retrieval/mean_recall"] = mean_recall[-1] if mean_recall else None
        summary[name] = final
    for axis, chance in zip(axes[:2], CHANCE.values(), strict=True):
        axis.axhline(chance, color="grey", linestyle="--", label="chance")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out / "clip_shapes.png", dpi=100)
    summary["chance"] = CHANCE
    summary["open_clip_vit_b32_laion400m_imagenet_zeroshot"] = OPEN_CLIP_VIT_B32_LAION400M
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
