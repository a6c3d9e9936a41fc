"""Benchmark a training step of the tiny Deformable DETR with the `reference` op against the compiled op.

One step = forward (model + Hungarian matching + losses), backward, gradient clipping and an AdamW step, on a
real batch of the generated shapes set (batch 8) built by the detection data loader, at 64 px (the tiny
config's size: 8x8/4x4/2x2 feature maps) and 256 px (32x32/16x16/8x8, where the op is a larger share). Each
implementation runs in its own subprocess so peak memory is measured cleanly (the CPU method of
benchmarks/ms_deform_attn.py: VmHWM - VmRSS with MALLOC_MMAP_THRESHOLD_=65536; on CUDA max_memory_allocated).
Time is the median step after warm-up steps. Ratios are against `reference` in the same run.

    python benchmarks/detection_step.py                            # reference vs cpu (vs cuda with a GPU)
    python benchmarks/detection_step.py --batch-size 16 --out /tmp/detection_step.json
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
from ms_deform_attn import _cpu_model, _measure_memory, _measure_time  # noqa: E402 - shared measurement method

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "deformable_detr" / "deformable_detr_tiny_shapes.yaml"


def worker(spec: dict) -> dict:
    """Measure one implementation in this process: median step ms and peak MiB of one step."""
    from vfm.config import load_config
    from vfm.data.loader import build_loader
    from vfm.data.shapes import make_shapes_dataset
    from vfm.engine.evaluate import move_to_device
    from vfm.engine.run_config import RunConfig
    from vfm.registry import OBJECTIVES, OPTIMIZERS

    device = torch.device("cuda" if spec["impl"] == "cuda" else "cpu")
    with tempfile.TemporaryDirectory() as root:
        make_shapes_dataset(root, num_train=spec["batch_size"], num_val=1, image_size=spec["image_size"], seed=0)
        cfg = load_config(CONFIG, [f"data.root={root}", f"data.batch_size={spec['batch_size']}",
                                   f"+objective.msda_impl={spec['impl']}"], RunConfig)
        batch = move_to_device(next(iter(build_loader(cfg.data.train, "data.train", cfg.data, 0, True))), device)
    torch.manual_seed(0)
    model = OBJECTIVES.build(cfg.objective, "objective").to(device).train()
    optimizer = OPTIMIZERS.build(cfg.optim, "optim", model=model)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
        optimizer.step()

    for _ in range(spec["warmup"]):  # optimizer state, allocator pools, thread pool
        step()
    peak = _measure_memory(step, device.type)
    milliseconds = _measure_time(step, device.type, spec["min_time"], spec["min_repeats"])
    return {"step_ms": milliseconds, "peak_mib": peak, "threads": torch.get_num_threads()}


def _run_worker(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    completed = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                               capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _available_impls() -> list[str]:
    from vfm.ops.ms_deform_attn import native_available

    impls = ["reference"]
    if native_available("cpu"):
        impls.append("cpu")
    if torch.cuda.is_available() and native_available("cuda"):
        impls.append("cuda")
    return impls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default=None, help="comma-separated; default every available implementation")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-sizes", default="64,256", help="comma-separated shapes image sizes (64 = the tiny config's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=5.0, help="seconds of timed steps per implementation")
    parser.add_argument("--min-repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="JSON path; default benchmarks/results/detection_step_<device>.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    load_start = os.getloadavg()[0]
    impls = args.impls.split(",") if args.impls else _available_impls()
    if "reference" not in impls:
        impls.insert(0, "reference")  # ratios need the reference measured in the same run
    rows = []
    for image_size in (int(s) for s in args.image_sizes.split(",")):
        for impl in impls:
            spec = {"impl": impl, "batch_size": args.batch_size, "image_size": image_size, "warmup": args.warmup,
                    "min_time": args.min_time, "min_repeats": args.min_repeats}
            print(f"measuring {spec} ...", file=sys.stderr, flush=True)
            rows.append({"image_size": image_size, "impl": impl, **_run_worker(spec)})
    for row in rows:
        base = next(r for r in rows if r["image_size"] == row["image_size"] and r["impl"] == "reference")
        row["speedup"] = base["step_ms"] / row["step_ms"]
        row["memory_ratio"] = base["peak_mib"] / max(row["peak_mib"], 1.0)  # RSS resolution ~1 MiB
    lines = ["| image px | op | step ms | peak MiB | speed-up vs reference | memory ratio vs reference |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['image_size']} | {r['impl']} | {r['step_ms']:.1f} | {r['peak_mib']:.1f} | {r['speedup']:.2f}x "
              f"| {r['memory_ratio']:.2f}x |" for r in rows]
    table = "\n".join(lines)
    print(table)

    device = "cuda" if "cuda" in impls else "cpu"
    out = args.out or Path(__file__).resolve().parent / "results" / f"detection_step_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": str(CONFIG.relative_to(REPO)),
        "batch_size": args.batch_size,
        "machine": {"cpu": _cpu_model(), "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "memory_method": "CPU: VmHWM - VmRSS of one step (clear_refs reset, MALLOC_MMAP_THRESHOLD_=65536); CUDA: max_memory_allocated delta",
        "results": rows,
        "table": table,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
