"""Benchmark multi-scale deformable attention: time and peak memory of reference, cpu and cuda implementations.

Shapes are Deformable DETR's (N=2, M=8, D=32, L=4, P=4; levels 100x150, 50x75, 25x38, 13x19; encoder Lq = S,
decoder Lq = 300) plus a small one. Every (shape, implementation, dtype) runs in its own subprocess so that
peak memory is measured cleanly:
  - CPU: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) minus its RSS just before the call,
    with MALLOC_MMAP_THRESHOLD_=65536 so glibc returns freed tensors to the OS and RSS follows live memory;
  - CUDA: torch.cuda.max_memory_allocated minus memory_allocated before the call.
Both count what the call allocates beyond its inputs (output, saved tensors, gradients, workspaces).
Time is the median of repeated calls after one warm-up. Ratios are against `reference` in the same run.

    python benchmarks/ms_deform_attn.py                      # all shapes, every available implementation
    python benchmarks/ms_deform_attn.py --shapes small --impls reference,cpu --out /tmp/msda.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

DETR_LEVELS = [(100, 150), (50, 75), (25, 38), (13, 19)]
SHAPES = {
    # name: (batch, heads, channels, points, levels, queries; None = one query per value position, as in the encoder)
    "small": (2, 8, 32, 4, [(25, 25), (13, 13), (7, 7), (4, 4)], None),
    "decoder": (2, 8, 32, 4, DETR_LEVELS, 300),
    "encoder": (2, 8, 32, 4, DETR_LEVELS, None),
}
MODES = ("fwd", "fwd_bwd")
MEMORY_RESOLUTION_MIB = 1.0  # CPU: glibc reuses freed heap blocks below this without growing RSS


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _measure_memory(run, device: str) -> float:
    """Peak MiB allocated by `run()` beyond what was live before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    run()
    return (_rss_kib("VmHWM") - before) / 1024


def _measure_time(run, device: str, min_time: float, min_repeats: int) -> float:
    """Median milliseconds over at least `min_repeats` calls and `min_time` seconds, after one warm-up."""
    run()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_time:
        begin = time.perf_counter()
        run()
        _sync(device)
        times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def worker(spec: dict) -> dict:
    """Measure one (shape, impl, dtype) in this process; returns times (ms) and peak memory (MiB) per mode."""
    from vfm.ops import multi_scale_deformable_attn
    from vfm.ops.ms_deform_attn_testing import random_inputs

    device = "cuda" if spec["impl"] == "cuda" else "cpu"
    dtype = getattr(torch, spec["dtype"])
    batch, heads, channels, points, levels, queries = SHAPES[spec["shape"]]
    spatial = sum(h * w for h, w in levels)
    queries = spatial if queries is None else queries

    def op(*args):
        return multi_scale_deformable_attn(*args, impl=spec["impl"])

    warm = random_inputs([(2, 2)], 1, 1, 2, 1, 1, dtype=dtype, device=device)
    op(*warm)  # load the extension, start the thread pool / CUDA context before measuring
    inputs = random_inputs(
        levels, batch, heads, channels, queries, points, dtype=dtype, device=device, far_fraction=0.0
    )
    value, shapes, starts, locations, weights = inputs
    grad_output = torch.randn(batch, queries, heads * channels, device=device, dtype=dtype)
    leaves = [t.clone().requires_grad_(True) for t in (value, locations, weights)]

    def forward():
        with torch.no_grad():
            op(value, shapes, starts, locations, weights)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        op(leaves[0], shapes, starts, leaves[1], leaves[2]).backward(grad_output)

    result = {}
    for mode, run in (("fwd", forward), ("fwd_bwd", forward_backward)):
        for leaf in leaves:
            leaf.grad = None
        result[f"{mode}_peak_mib"] = _measure_memory(run, device)
        result[f"{mode}_ms"] = _measure_time(run, device, spec["min_time"], spec["min_repeats"])
    result["threads"] = torch.get_num_threads()
    return result


def _run_worker(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONWARNINGS="ignore")
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _available_impls() -> list[str]:
    from vfm.ops.ms_deform_attn import native_available

    impls = ["reference"]
    if native_available("cpu"):
        impls.append("cpu")
    if torch.cuda.is_available() and native_available("cuda"):
        impls.append("cuda")
    return impls


def add_ratios(rows: list[dict]) -> None:
    """Speed-up and memory ratio of every row against the reference row of the same shape."""
    for row in rows:
        base = next(r for r in rows if r["shape"] == row["shape"] and r["impl"] == "reference")
        for mode in MODES:
            row[f"speedup_{mode}"] = base[f"{mode}_ms"] / row[f"{mode}_ms"]
            # Below the ~1 MiB resolution of the RSS method the ratio is only a lower bound.
            peak = row[f"{mode}_peak_mib"]
            row[f"memory_ratio_{mode}_is_lower_bound"] = peak < MEMORY_RESOLUTION_MIB
            row[f"memory_ratio_{mode}"] = base[f"{mode}_peak_mib"] / max(peak, MEMORY_RESOLUTION_MIB)


def _ratio(row: dict, key: str) -> str:
    bound = "≥" if row.get(f"{key}_is_lower_bound") else ""
    return f"{bound}{row[key]:.2f}x"


def _table(rows: list[dict]) -> str:
    header = (
        "| shape | impl | dtype | fwd ms | fwd+bwd ms | fwd MiB | fwd+bwd MiB | speed-up fwd | speed-up fwd+bwd "
        "| memory ratio fwd | memory ratio fwd+bwd |"
    )
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['impl']} | {r['dtype']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} "
            f"| {r['fwd_peak_mib']:.1f} | {r['fwd_bwd_peak_mib']:.1f} | {r['speedup_fwd']:.2f}x "
            f"| {r['speedup_fwd_bwd']:.2f}x | {_ratio(r, 'memory_ratio_fwd')} | {_ratio(r, 'memory_ratio_fwd_bwd')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="small,decoder,encoder", help=f"comma-separated subset of {list(SHAPES)}")
    parser.add_argument("--impls", default=None, help="comma-separated; default every available implementation")
    parser.add_argument("--dtypes", default="float32", help="comma-separated; reference always runs in float32")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timed calls per measurement")
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path; default benchmarks/results/ms_deform_attn_<device>.json"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    load_start = os.getloadavg()[0]  # other processes on the machine skew the timings; recorded in the JSON
    impls = args.impls.split(",") if args.impls else _available_impls()
    if "reference" not in impls:
        impls.insert(0, "reference")  # ratios need the reference measured in the same run
    rows = []
    for shape in args.shapes.split(","):
        for impl in impls:
            for dtype in args.dtypes.split(",") if impl != "reference" else ["float32"]:
                spec = {
                    "shape": shape,
                    "impl": impl,
                    "dtype": dtype,
                    "min_time": args.min_time,
                    "min_repeats": args.min_repeats,
                }
                print(f"measuring {spec} ...", file=sys.stderr, flush=True)
                rows.append({"shape": shape, "impl": impl, "dtype": dtype, **_run_worker(spec)})
    add_ratios(rows)
    table = _table(rows)
    print(table)

    device = "cuda" if "cuda" in impls else "cpu"
    out = args.out or Path(__file__).resolve().parent / "results" / f"ms_deform_attn_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": _cpu_model(),
            "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        },
        "shapes": {
            name: {"N": s[0], "M": s[1], "D": s[2], "P": s[3], "levels": s[4], "Lq": s[5] or "S"}
            for name, s in SHAPES.items()
        },
        "memory_method": "CPU: VmHWM - VmRSS (clear_refs reset, MALLOC_MMAP_THRESHOLD_=65536); CUDA: max_memory_allocated delta",
        "results": rows,
        "table": table,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
