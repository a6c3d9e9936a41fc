"""Benchmark the fine-tuning modes of task arithmetic on one ViT and one batch: standard, attn_only, linearized.

Each mode is the `task_arithmetic` objective the Trainer runs (its trainable selection applied, AdamW built by the
optimizer registry as the Trainer builds it), timed over a full optimizer step: forward, backward, gradient
clipping, AdamW step, zero_grad. Reported per mode, with ratios to `standard` measured in the same run:

- time per step: median over `--steps` timed steps after `--warmup`, the modes interleaved step by step (A B C A B C
  ...), so a burst of load from another process on a shared machine hits every mode alike;
- peak memory: on CUDA, torch.cuda.max_memory_allocated over a step; on CPU (no allocator statistics), the bytes of
  the tensors autograd saves for backward (activations; what dominates a step's memory), via saved_tensors_hooks;
- optimizer state: bytes of AdamW's moments after a step (only the trainable tensors have any);
- task vector: bytes of the float32 deltas a task vector of that mode holds (its rule's tensors).

    python benchmarks/finetune_modes.py                                 # the reproduction's digits ViT, batch 64
    python benchmarks/finetune_modes.py --preset b32 --batch-size 8     # ViT-B/32 at 224 px (the paper's model)
    python benchmarks/finetune_modes.py --out benchmarks/results/finetune_modes_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from vfm.engine.objective import select_trainable  # noqa: E402
from vfm.registry import OPTIMIZERS  # noqa: E402
from vfm.task_arithmetic.objective import TaskArithmeticClassifier  # noqa: E402

MODES = ("standard", "attn_only", "linearized")
PRESETS = {
    "digits": ({"type": "timm", "name": "vit_tiny_patch16_224", "img_size": 8, "patch_size": 2, "in_chans": 1,
                "embed_dim": 64, "depth": 4, "num_heads": 4}, 8, 1),
    "b32": ({"type": "timm", "name": "vit_base_patch32_clip_224"}, 224, 3),
}


def build(mode: str, preset: str, device: torch.device) -> tuple[TaskArithmeticClassifier, torch.optim.Optimizer]:
    """The objective in `mode` with its selection applied, and AdamW as the Trainer builds it (paper's lr, wd)."""
    backbone, size, channels = PRESETS[preset]
    torch.manual_seed(0)
    objective = TaskArithmeticClassifier(
        backbone=backbone, task="identity", finetune={"mode": mode},
        probe_data={"type": "derived_task", "task": "identity", "split": "train", "image_size": size,
                    "channels": channels, "max_samples": 64},
    ).to(device)
    select_trainable(objective, objective.trainable_parameters(), "benchmark")
    optimizer = OPTIMIZERS.build({"type": "adamw", "lr": 1e-5, "weight_decay": 0.1}, "optim", model=objective)
    return objective, optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(objective: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    """One optimizer step as the Trainer takes it (fp32, clip 1.0)."""
    loss = objective(batch)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in objective.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def saved_activation_bytes(objective: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward in one forward (distinct storages counted once)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        with contextlib.suppress(RuntimeError):  # some saved tensors have no storage (wrapper subclasses)
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = objective(batch)["loss"]
    loss.backward()
    objective.zero_grad(set_to_none=True)
    return sum(seen.values())


def measure(preset: str, batch_size: int, steps: int, warmup: int, device: torch.device) -> dict[str, Any]:
    """Every mode on the same batch, interleaved; the raw numbers and the ratios to standard."""
    _, size, channels = PRESETS[preset]
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(batch_size, channels, size, size, generator=generator).to(device),
             "label": torch.randint(0, 10, (batch_size,), generator=generator).to(device)}
    runs = {mode: build(mode, preset, device) for mode in MODES}
    for _ in range(warmup):
        for objective, optimizer in runs.values():
            step(objective, optimizer, batch)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    peaks: dict[str, int] = {}
    for _ in range(steps):
        for mode, (objective, optimizer) in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            start = time.perf_counter()
            step(objective, optimizer, batch)
            _sync(device)
            times[mode].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[mode] = max(peaks.get(mode, 0), torch.cuda.max_memory_allocated(device))
    rows = {}
    for mode, (objective, optimizer) in runs.items():
        trainable = [p for p in objective.parameters() if p.requires_grad]
        state_bytes = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                          if isinstance(v, torch.Tensor) and v.numel() > 1)
        rows[mode] = {
            "step_ms": 1000 * statistics.median(times[mode]),
            "memory_bytes": peaks[mode] if device.type == "cuda" else saved_activation_bytes(objective, batch),
            "optimizer_state_bytes": state_bytes,
            "task_vector_bytes": sum(p.numel() * 4 for p in trainable),
            "trainable": sum(p.numel() for p in trainable),
            "total": sum(p.numel() for p in objective.encoder.parameters()),
        }
    base = rows["standard"]
    for row in rows.values():
        for key in ("step_ms", "memory_bytes", "optimizer_state_bytes", "task_vector_bytes"):
            row[f"{key}_ratio"] = row[key] / base[key] if base[key] else float("nan")
    return rows


def main() -> int:
    """Parse, measure, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = measure(args.preset, args.batch_size, args.steps, args.warmup, device)
    memory = "peak CUDA memory" if device.type == "cuda" else "saved activations"
    print(f"preset {args.preset}, batch {args.batch_size}, {device}, {torch.get_num_threads()} threads, median of "
          f"{args.steps} interleaved steps")
    print(f"| mode | trainable | step (ms) | x standard | {memory} (MiB) | x | optimizer state (MiB) | x | "
          "task vector (MiB) | x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, row in rows.items():
        print(f"| {mode} | {row['trainable']:,} / {row['total']:,} | {row['step_ms']:.1f} | {row['step_ms_ratio']:.2f} | "
              f"{row['memory_bytes'] / 2**20:.1f} | {row['memory_bytes_ratio']:.2f} | "
              f"{row['optimizer_state_bytes'] / 2**20:.2f} | {row['optimizer_state_bytes_ratio']:.2f} | "
              f"{row['task_vector_bytes'] / 2**20:.2f} | {row['task_vector_bytes_ratio']:.2f} |")
    if args.out:
        payload = {"preset": args.preset, "batch_size": args.batch_size, "steps": args.steps, "device": str(device),
                   "threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform(),
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "modes": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
