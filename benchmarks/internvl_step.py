"""Benchmark InternVL training steps on CPU: stage 2 with frozen towers vs all trainable; InternViT sdpa vs math.

(a) `internvl_stage2` (ITC + ITM + ITG in one pass of 3B sequences) on InternViT-tiny at 32 px and a 4-layer
LLaMA from scratch (width 128, the captioned shapes' word tokenizer), with the towers frozen (`freeze: [vision,
text]`, the stage-2 default: no vision activations kept, no gradients or AdamW state for the towers) against the
same model with everything trainable (`freeze: []`), on the same batch of shape captions. (b) An InternViT
classification step (tokens -> class token -> linear head -> cross-entropy) with `attn_impl: sdpa` against
`attn_impl: math` (the explicit softmax). One step = forward, loss, backward, AdamW step (and the objective's
temperature clamp). Each case runs in its own subprocess; time is the median step after a warm-up, memory the
peak RSS growth of one step (VmHWM - VmRSS), as in clip_step.py. `--rounds N` runs all cases N times, interleaved,
and reports each case's median over the rounds (a shared machine's load then hits every case alike).

    python benchmarks/internvl_step.py                       # stage-2 batch 16, InternViT batch 32
    python benchmarks/internvl_step.py --min-time 5 --repeats 5 --out /tmp/internvl_step.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ms_deform_attn import _measure_memory, _measure_time  # noqa: E402 - shared measurement method

REPO = Path(__file__).resolve().parents[1]
IMAGE = 32
# case -> (group, baseline of its group?, builder arguments)
CASES = {
    "stage2 all trainable": ("stage2", True, {"freeze": []}),
    "stage2 frozen towers": ("stage2", False, {"freeze": ["vision", "text"]}),
    "internvit math": ("internvit", True, {"attn_impl": "math"}),
    "internvit sdpa": ("internvit", False, {"attn_impl": "sdpa"}),
}


def _captions(n: int) -> list[str]:
    from vfm.data.shapes_captions import grammar_texts

    texts = list(grammar_texts())
    g = torch.Generator().manual_seed(0)
    return [texts[i] for i in torch.randint(len(texts), (n,), generator=g).tolist()]


def _counts(module: torch.nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def stage2_step(batch_size: int, freeze: list[str], tokenizer_dir: str):
    from vfm.data.shapes_captions import grammar_texts
    from vfm.data.word_tokenizer import train_word_tokenizer
    from vfm.registry import OBJECTIVES

    tokenizer = str(train_word_tokenizer(grammar_texts(), tokenizer_dir))
    torch.manual_seed(0)
    objective = OBJECTIVES.build({
        "type": "internvl_stage2", "embed_dim": 64, "pool_heads": 4, "freeze": freeze, "prompt": "summarize: ",
        "vision": {"type": "internvit", "variant": "internvit_tiny"},
        "qllama": {"tokenizer": tokenizer, "num_queries": 8, "cross_attention_frequency": 2, "max_length": 32,
                   "config": {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 4,
                              "num_attention_heads": 4, "intermediate_size": 256, "max_position_embeddings": 64}},
    }, "objective").train()
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(batch_size, 3, IMAGE, IMAGE, generator=g), "text": _captions(batch_size)}

    def step():
        torch.manual_seed(0)  # the same ITM negatives every step
        objective(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.on_optimizer_step(1, 10)

    return step, _counts(objective)


def internvit_step(batch_size: int, attn_impl: str):
    import torch.nn.functional as F

    from vfm.registry import BACKBONES

    torch.manual_seed(0)
    model = BACKBONES.build({"type": "internvit", "variant": "internvit_tiny", "attn_impl": attn_impl,
                             "num_classes": 10}, "backbone").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(batch_size, 3, IMAGE, IMAGE, generator=g), torch.randint(10, (batch_size,), generator=g)

    def step():
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, _counts(model)


def worker(spec: dict) -> dict:
    """Measure one case in this process."""
    torch.set_num_threads(spec["threads"])
    group, _, kwargs = CASES[spec["case"]]
    if group == "stage2":
        with tempfile.TemporaryDirectory() as tokenizer_dir:
            step, (trainable, total) = stage2_step(spec["stage2_batch"], kwargs["freeze"], tokenizer_dir)
    else:
        step, (trainable, total) = internvit_step(spec["vit_batch"], kwargs["attn_impl"])
    ms = _measure_time(step, "cpu", spec["min_time"], spec["repeats"])
    mib = _measure_memory(step, "cpu")
    return {"case": spec["case"], "group": group, "ms": ms, "peak_mib": mib, "trainable_params": trainable,
            "params": total}


def main() -> int:
    """Run every case, print the table (ratios against each group's baseline), write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage2-batch", type=int, default=16)
    parser.add_argument("--vit-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="run all cases this many times, interleaved")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "internvl_step.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    runs: dict[str, list[dict]] = {case: [] for case in CASES}
    for _ in range(args.rounds):
        for case in CASES:
            spec = {"case": case, "stage2_batch": args.stage2_batch, "vit_batch": args.vit_batch,
                    "threads": args.threads, "min_time": args.min_time, "repeats": args.repeats}
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1"}
            out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            runs[case].append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    for results in runs.values():
        row = dict(results[0])
        row["ms"] = statistics.median(r["ms"] for r in results)
        row["peak_mib"] = statistics.median(r["peak_mib"] for r in results)
        row["ms_rounds"] = [round(r["ms"], 1) for r in results]
        rows.append(row)
    baselines = {CASES[row["case"]][0]: row for row in rows if CASES[row["case"]][1]}
    print(f"InternVL steps, {IMAGE}px InternViT-tiny; stage 2 batch {args.stage2_batch} (LLaMA 4x128), "
          f"InternViT batch {args.vit_batch}; {args.threads} threads, median of {args.rounds} round(s)")
    print(f"{'case':<22} {'ms/step':>9} {'ratio':>6} {'peak MiB':>9} {'ratio':>6} {'trainable':>11} {'params':>11}")
    for row in rows:
        base = baselines[row["group"]]
        row["time_ratio"], row["memory_ratio"] = row["ms"] / base["ms"], row["peak_mib"] / base["peak_mib"]
        print(f"{row['case']:<22} {row['ms']:9.1f} {row['time_ratio']:6.2f} {row['peak_mib']:9.1f} "
              f"{row['memory_ratio']:6.2f} {row['trainable_params']:11,} {row['params']:11,}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": datetime.date.today().isoformat(), "image_size": IMAGE,
                                          "stage2_batch": args.stage2_batch, "vit_batch": args.vit_batch,
                                          "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
