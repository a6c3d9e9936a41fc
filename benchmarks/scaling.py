"""Distributed scaling on CPU (issue 4): samples/s of 1 vs 2 processes per strategy, and memory per rank.

Each case trains a small timm ViT (vit_tiny_patch16_224 at 32 px, patch 8, depth 4: 1.8 M parameters, AdamW)
on a fixed global batch of random images through `vfm.engine.strategies`, under its own
`python -m torch.distributed.run` launch (gloo, OMP_NUM_THREADS=1 per process, a free port):

    single         1 process   (the baseline)
    ddp            2 processes
    fsdp           2 processes (FSDP2 fully_shard per block, reshard after forward)
    deepspeed z1/2/3  2 processes (ZeRO stage 1, 2, 3)

Reported per case:
- samples/s over `--steps` timed optimizer steps after `--warmup` (rank 0's wall time between two barriers),
  and its ratio to the 1-process baseline of the same run;
- model-state bytes per rank: every distinct tensor storage reachable from the wrapped model (parameters, their
  local shards, `.grad`) and from the optimizer object (its state, and DeepSpeed's flat fp32 partitions and
  gradient buffers), counted once each, taken after the last backward and before the last optimizer step (when
  parameters, gradients and optimizer state all exist). Deterministic; split into params / grads / optimizer
  state / other (DeepSpeed's master copies and buffers), with its ratio to DDP;
- peak RSS per rank (VmHWM, reset after imports) and its growth over the RSS before the model was built.

On a machine with fewer cores than 2 x threads, two processes compete for the same cores: throughput is not
expected to scale there; the memory columns are what the sharding strategies change.

    python benchmarks/scaling.py                                    # all cases, writes benchmarks/results/scaling_cpu.json
    python benchmarks/scaling.py --cases single,ddp --steps 10 --out /tmp/scaling.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

# name -> (processes, strategy, strategy options)
CASES: dict[str, tuple[int, str, dict[str, Any]]] = {
    "single": (1, "single", {}),
    "ddp": (2, "ddp", {}),
    "fsdp": (2, "fsdp", {}),
    "deepspeed_z1": (2, "deepspeed", {"zero_stage": 1}),
    "deepspeed_z2": (2, "deepspeed", {"zero_stage": 2}),
    "deepspeed_z3": (2, "deepspeed", {"zero_stage": 3}),
}
# DeepSpeed's default buckets (5e8 elements) would dwarf a 1.8 M-parameter model in the byte count.
DEEPSPEED_BUCKET = 2**20
MIB = 2**20


# ------------------------------------------------------------------------------------------- worker
def build_model() -> Any:
    """The benchmark ViT, with the same initial weights on every rank."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4,
                             num_classes=10)


def proc_status_kib(field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def storage_key(tensor: Any) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def local_tensor(tensor: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def held_bytes(model: Any, optimizer: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes of distinct tensor storages held by this rank's model and optimizer, split by role."""
    import torch
    from torch import nn

    seen: set[int] = set()

    def count(tensors: list[Any]) -> int:
        total = 0
        for tensor in tensors:
            tensor = local_tensor(tensor)
            ptr, nbytes = storage_key(tensor)
            if ptr and ptr not in seen:
                seen.add(ptr)
                total += nbytes
        return total

    params = list(model.parameters())
    split = {
        # ZeRO-3 keeps this rank's partition in `ds_tensor`; `.data` is empty outside forward/backward.
        "params": count([p for p in params] + [p.ds_tensor for p in params if hasattr(p, "ds_tensor")]),
        "grads": count([p.grad for p in params if p.grad is not None]),
    }
    state = [value for per_param in getattr(optimizer, "state", {}).values() for value in per_param.values()
             if isinstance(value, torch.Tensor)]
    inner = getattr(optimizer, "optimizer", None)  # DeepSpeed wraps the torch optimizer
    if inner is not None:
        state += [value for per_param in inner.state.values() for value in per_param.values()
                  if isinstance(value, torch.Tensor)]
    split["optimizer_state"] = count(state)

    # Everything else the optimizer object holds (DeepSpeed's fp32 partitions, flat buffers, gradient partitions),
    # attributed to the optimizer attribute through which each storage is first reached.
    def reachable(root: Any) -> list[Any]:
        found: list[Any] = []
        stack: list[tuple[Any, int]] = [(root, 0)]
        while stack:
            obj, depth = stack.pop()
            if id(obj) in visited or depth > 6:
                continue
            visited.add(id(obj))
            if isinstance(obj, torch.Tensor):
                if obj.device.type != "meta":
                    found.append(obj)
            elif isinstance(obj, nn.Module):
                continue  # counted above
            elif isinstance(obj, dict):
                stack.extend((value, depth + 1) for value in [*obj.keys(), *obj.values()])
            elif isinstance(obj, (list, tuple, set)):
                stack.extend((value, depth + 1) for value in obj)
            elif type(obj).__module__.split(".")[0] in ("deepspeed", "torch") and hasattr(obj, "__dict__"):
                stack.extend((value, depth + 1) for value in vars(obj).values())
        return found

    visited: set[int] = {id(optimizer)}
    other_by_attribute = {name: count(reachable(value)) for name, value in sorted(vars(optimizer).items())}
    other_by_attribute = {name: nbytes for name, nbytes in other_by_attribute.items() if nbytes}
    split["other"] = sum(other_by_attribute.values())
    split["total"] = sum(split.values())
    return split, other_by_attribute


def run_worker(case_name: str, global_batch: int, warmup: int, steps: int, out: Path) -> None:
    """Train one case on this rank; rank 0 writes the gathered per-rank results to `out`."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from vfm.engine.strategies import build_strategy

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _, strategy_name, options = CASES[case_name]
    options = dict(options)
    if strategy_name == "deepspeed":
        options["config"] = {"zero_optimization": {"reduce_bucket_size": DEEPSPEED_BUCKET,
                                                             "allgather_bucket_size": DEEPSPEED_BUCKET,
                                                             "stage3_prefetch_bucket_size": DEEPSPEED_BUCKET}}
    per_rank = global_batch // world
    if strategy_name == "deepspeed":  # import it before the RSS baseline, so the baseline holds it in every case
        from vfm.engine.strategies.deepspeed import import_deepspeed

        import_deepspeed()
    rss_before_model = proc_status_kib("VmRSS")
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux >= 4.0)

    strategy = build_strategy(strategy_name, micro_batch_size=per_rank, **options)
    model, optimizer = strategy.wrap(build_model(), lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))
    generator = torch.Generator().manual_seed(1234)
    images = torch.randn(global_batch, 3, 32, 32, generator=generator)[rank * per_rank:(rank + 1) * per_rank]
    labels = torch.randint(0, 10, (global_batch,), generator=generator)[rank * per_rank:(rank + 1) * per_rank]

    memory: dict[str, int] = {}
    other_by_attribute: dict[str, int] = {}
    start = 0.0
    losses = []
    for step in range(warmup + steps):
        if step == warmup:
            if dist.is_initialized():
                dist.barrier()
            start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        strategy.backward(loss)
        if step == warmup + steps - 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                memory, other_by_attribute = held_bytes(model, optimizer)
        strategy.optimizer_step(optimizer)
        strategy.zero_grad(optimizer)
        losses.append(float(loss))
    if dist.is_initialized():
        dist.barrier()
    elapsed = time.perf_counter() - start
    result = {"rank": rank, "elapsed_s": elapsed, "memory_bytes": memory, "other_bytes_by_attribute": other_by_attribute,
              "last_loss": losses[-1],
              "rss_before_model_mib": rss_before_model / 1024, "peak_rss_mib": proc_status_kib("VmHWM") / 1024}
    results = [result]
    if dist.is_initialized():
        results = [None] * world
        dist.all_gather_object(results, result)
    if rank == 0:
        out.write_text(json.dumps({"case": case_name, "world_size": world, "ranks": results}))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown, where gloo/DeepSpeed threads have aborted exits before


# -------------------------------------------------------------------------------------- orchestrator
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(case_name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run one case under torchrun and return rank 0's JSON."""
    processes = CASES[case_name][0]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, "--worker", case_name,
               "--global-batch", str(args.global_batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--worker-out", str(out)]
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.case_timeout)
    if completed.returncode != 0 or not out.is_file():
        raise RuntimeError(f"case {case_name} failed (exit {completed.returncode}):\n{completed.stdout[-3000:]}\n"
                           f"{completed.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["launch_wall_s"] = time.perf_counter() - started
    return result


def summarise(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    ranks = result["ranks"]
    elapsed = max(rank["elapsed_s"] for rank in ranks)
    memory = {key: max(rank["memory_bytes"][key] for rank in ranks) for key in ranks[0]["memory_bytes"]}
    return {
        "processes": result["world_size"],
        "samples_per_s": args.global_batch * args.steps / elapsed,
        "state_mib_per_rank": {key: value / MIB for key, value in memory.items()},
        "other_mib_by_attribute_rank0": {key: value / MIB for key, value in ranks[0]["other_bytes_by_attribute"].items()},
        "peak_rss_mib_per_rank": max(rank["peak_rss_mib"] for rank in ranks),
        "rss_growth_mib_per_rank": max(rank["peak_rss_mib"] - rank["rss_before_model_mib"] for rank in ranks),
        "last_loss": ranks[0]["last_loss"],
        "launch_wall_s": result["launch_wall_s"],
        "ranks": ranks,
    }


def print_table(summaries: dict[str, dict[str, Any]]) -> None:
    base = summaries["single"]["samples_per_s"] if "single" in summaries else None
    ddp = summaries["ddp"]["state_mib_per_rank"]["total"] if "ddp" in summaries else None
    header = ("| case | procs | samples/s | vs 1 proc | state MiB/rank (params+grads+optim+other) | vs DDP "
              "| peak RSS MiB/rank | RSS growth MiB |")
    print(header)
    print("|" + " --- |" * 8)
    for name, summary in summaries.items():
        state = summary["state_mib_per_rank"]
        ratio = f"{summary['samples_per_s'] / base:.2f}x" if base else "-"
        mem_ratio = f"{state['total'] / ddp:.2f}x" if ddp else "-"
        parts = "+".join(f"{state[key]:.1f}" for key in ("params", "grads", "optimizer_state", "other"))
        print(f"| {name} | {summary['processes']} | {summary['samples_per_s']:.1f} | {ratio} | "
              f"{state['total']:.1f} ({parts}) | {mem_ratio} | {summary['peak_rss_mib_per_rank']:.0f} | "
              f"{summary['rss_growth_mib_per_rank']:.0f} |")
    for name, summary in summaries.items():
        if summary["other_mib_by_attribute_rank0"]:
            parts = ", ".join(f"{key} {value:.2f}" for key, value in summary["other_mib_by_attribute_rank0"].items())
            print(f"{name} other MiB (rank 0, by optimizer attribute): {parts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--global-batch", type=int, default=32, help="samples per optimizer step, split over ranks")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process")
    parser.add_argument("--case-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scaling_cpu.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.global_batch, args.warmup, args.steps, args.worker_out)
        return 0

    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}, expected names from {list(CASES)}")
    summaries: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            summaries[name] = summarise(launch(name, args, Path(tmp) / f"{name}.json"), args)
            print(f"{name}: {summaries[name]['samples_per_s']:.1f} samples/s "
                  f"({summaries[name]['launch_wall_s']:.0f} s with launch)", file=sys.stderr, flush=True)
    print_table(summaries)

    import torch

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()},
        "torch": torch.__version__,
        "settings": {"model": "vit_tiny_patch16_224 img_size=32 patch_size=8 depth=4 num_classes=10",
                     "optimizer": "AdamW lr=1e-3", "precision": "fp32", "global_batch": args.global_batch,
                     "warmup": args.warmup, "steps": args.steps, "omp_num_threads_per_process": args.threads,
                     "backend": "gloo", "deepspeed_bucket_elements": DEEPSPEED_BUCKET},
        "cases": summaries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
