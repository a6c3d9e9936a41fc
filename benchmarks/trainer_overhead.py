"""Benchmark the Trainer's per-step cost against a hand-written PyTorch loop (issue 2: at most 3% overhead).

Both sides train what `configs/quickstart.yaml` describes, read from the same resolved config: timm resnet18
(1 input channel, 10 classes), label-smoothed cross-entropy, the digits train split at 32 px with its random_affine
augmentation, batch 64, num_workers 0, AdamW with decay / no-decay parameter groups, linear warmup then cosine,
gradient clipping, and the same precision (fp32, or bf16 autocast).

- Trainer: `Trainer(cfg, work_dir).train()` with evaluation, periodic checkpoints and the safetensors export turned
  off (data.val=null, eval.interval=0, checkpoint.interval=0); per-step logging stays on (metrics.jsonl and
  TensorBoard every train.log_interval steps), as do the non-finite checks and the per-sample seeded augmentation
  that makes resume exact, because they are part of what every step costs.
- Bare loop: DataLoader(shuffle=True, drop_last=True) -> forward -> cross_entropy -> backward -> clip -> step ->
  zero_grad -> scheduler.step, and `loss.item()` every log_interval steps, as a careful user would write it.

Timing sums the step times after `--warmup` steps, taken at the end of each optimizer step (a hook's after_step for
the Trainer, after scheduler.step for the bare loop; synchronised on CUDA), so a Trainer step includes the logging
and checks it does between steps, and setup, the end-of-run checkpoint and teardown are excluded on both sides.
The machine may be shared, so the two sides are interleaved:
- `--interleave step` (default): one run holds both; a hook runs one bare-loop step after every Trainer step, so a
  burst of load from another process hits both sides alike;
- `--interleave run`: whole runs of each side in ABBA order (trainer, bare, bare, trainer, ...).
The report gives the median steps/s of each side over `--repeats` and overhead = bare / trainer - 1.

    python benchmarks/trainer_overhead.py                                  # fp32, 60 timed steps, 3 runs each
    python benchmarks/trainer_overhead.py --interleave run --no-augment --out /tmp/overhead.json
    python benchmarks/trainer_overhead.py --precision bf16 --steps 40 --repeats 5 --out /tmp/overhead_bf16.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from vfm.config import load_config  # noqa: E402
from vfm.data.digits import DigitsDataset  # noqa: E402
from vfm.engine.hooks import Hook  # noqa: E402
from vfm.engine.run_config import RunConfig  # noqa: E402
from vfm.engine.trainer import Trainer  # noqa: E402

GOAL_PCT = 3.0
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(total_steps: int, precision: str, work_dir: str, augment: bool) -> DictConfig:
    """The quickstart config with what the bare loop has no counterpart for switched off."""
    overrides = [
        f"train.max_steps={total_steps}",
        f"train.precision={precision}",
        "train.progress_bar=never",
        "data.val=null",
        "eval.interval=0",
        "eval.metric=null",
        "eval.evaluators=[]",
        "checkpoint.interval=0",
        "checkpoint.export_safetensors=false",
        f"work_dir={work_dir}",
    ]
    if not augment:
        overrides.append("data.train.transforms=[]")
    cfg = load_config(QUICKSTART, overrides, RunConfig)
    # The schedule's warmup must fit in a short benchmark run; both sides read it from here.
    cfg.scheduler.warmup_steps = min(cfg.scheduler.warmup_steps, total_steps // 2)
    return cfg


def lr_factor(step: int, total_steps: int, warmup_steps: int, start_factor: float, min_lr_ratio: float) -> float:
    """Linear warmup from `start_factor` to 1, then a half-cosine down to `min_lr_ratio`."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class BareLoop:
    """The loop a careful user writes by hand, one optimizer step per `step()` call."""

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        import timm

        self.device = device
        torch.manual_seed(cfg.seed)
        backbone = cfg.objective.backbone
        self.model = timm.create_model(backbone.name, in_chans=backbone.in_chans, num_classes=cfg.objective.num_classes)
        self.model.to(device).train()
        train_node = cfg.data.train
        dataset = DigitsDataset(
            split=train_node.split,
            image_size=train_node.image_size,
            transforms=OmegaConf.to_container(train_node.transforms),
        )
        self.loader = DataLoader(
            dataset,
            batch_size=cfg.data.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.data.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        self.batches = iter(self.loader)
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]  # norms and biases
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.optim.lr,
        )
        total, sched = cfg.train.max_steps, cfg.scheduler
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total, sched.warmup_steps, 0.001, sched.min_lr_ratio)
        )
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16}[cfg.train.precision]
        self.label_smoothing, self.clip = cfg.objective.label_smoothing, cfg.train.clip_grad_norm
        self.log_interval = cfg.train.log_interval
        self.steps_done, self.losses = 0, []

    def step(self) -> None:
        """Next batch (a new epoch when the loader runs out), forward, loss, backward, clip, step, schedule."""
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        images, labels = batch["image"].to(self.device), batch["label"].to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.steps_done += 1
        if self.steps_done % self.log_interval == 0:
            self.losses.append(loss.item())


class StepClock(Hook):
    """Timestamps the end of every Trainer step; with `bare`, runs one bare-loop step right after it (lockstep)."""

    def __init__(self, device: torch.device, log_interval: int, bare: BareLoop | None = None) -> None:
        self.device, self.log_interval, self.bare = device, log_interval, bare
        self.trainer_ends: list[float] = []
        self.bare_ends: list[float] = []
        self.losses: list[float] = []

    def after_step(self, trainer: Trainer, outputs: dict[str, Any]) -> None:
        _sync(self.device)
        self.trainer_ends.append(time.perf_counter())
        if trainer.step % self.log_interval == 0:
            self.losses.append(outputs["loss"])
        if self.bare is not None:
            self.bare.step()
            _sync(self.device)
            self.bare_ends.append(time.perf_counter())


def _result(seconds: float, steps: int, losses: list[float]) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "mean_logged_loss": statistics.fmean(losses) if losses else math.nan,
    }


def time_trainer(warmup: int, steps: int, precision: str, augment: bool, lockstep: bool) -> dict[str, dict[str, Any]]:
    """Time the steps after `warmup` of `Trainer.train()`, and with `lockstep` of a bare loop stepping in between.

    A Trainer step is timed from the end of the previous step (or of the bare step that followed it) to its own
    end, so it includes the logging and checks the Trainer does between steps.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="vfm_overhead_") as work_dir:
        cfg = run_config(warmup + steps, precision, work_dir, augment)
        bare = BareLoop(cfg, device) if lockstep else None
        trainer = Trainer(cfg, work_dir)
        clock = StepClock(trainer.device, cfg.train.log_interval, bare)
        trainer.hooks.append(clock)
        trainer.train()
    previous_ends = clock.bare_ends if lockstep else clock.trainer_ends
    timed = range(warmup, warmup + steps)
    results = {
        "trainer": _result(sum(clock.trainer_ends[k] - previous_ends[k - 1] for k in timed), steps, clock.losses)
    }
    if bare is not None:
        seconds = sum(clock.bare_ends[k] - clock.trainer_ends[k] for k in timed)
        results["bare"] = _result(seconds, steps, bare.losses)
    return results


def time_bare_loop(warmup: int, steps: int, precision: str, augment: bool) -> dict[str, Any]:
    """Time the steps after `warmup` of the bare loop on its own."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bare = BareLoop(run_config(warmup + steps, precision, "unused", augment), device)
    ends = []
    for _ in range(warmup + steps):
        bare.step()
        _sync(device)
        ends.append(time.perf_counter())
    return _result(ends[-1] - ends[warmup - 1], steps, bare.losses)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _table(report: dict[str, Any]) -> str:
    lines = [f"{'side':<8} {'run':>3} {'seconds':>8} {'steps/s':>8} {'mean loss':>9} {'load 1 min':>12}"]
    for run in report["runs"]:
        load = "{:.1f} -> {:.1f}".format(*run["load_1min"])
        lines.append(
            f"{run['side']:<8} {run['repeat']:>3} {run['seconds']:>8.2f} {run['steps_per_s']:>8.3f} "
            f"{run['mean_logged_loss']:>9.4f} {load:>12}"
        )
    median = report["median_steps_per_s"]
    lines.append(
        f"median steps/s: trainer {median['trainer']:.3f}, bare {median['bare']:.3f}; "
        f"overhead (bare/trainer - 1) {report['overhead_pct']:+.2f}% (goal <= {GOAL_PCT:.0f}%)"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each side")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--interleave",
        choices=["step", "run"],
        default="step",
        help="step: one Trainer step, one bare step, ... in each run; run: whole runs in ABBA order",
    )
    parser.add_argument("--no-augment", action="store_true", help="drop data.train.transforms on both sides")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "trainer_overhead.json", help="JSON report path"
    )
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        parser.error("--steps, --warmup and --repeats must be >= 1")
    augment = not args.no_augment

    runs: list[dict[str, Any]] = []

    def record(side: str, repeat: int, result: dict[str, Any], load_before: float) -> None:
        # Other processes on the machine slow both sides; the load average shows when they did.
        runs.append({"side": side, "repeat": repeat, **result, "load_1min": [load_before, os.getloadavg()[0]]})
        print(f"{side:<8} run {repeat}: {result['steps_per_s']:.3f} steps/s", file=sys.stderr, flush=True)

    for repeat in range(args.repeats):
        gc.collect()
        if args.interleave == "step":
            load_before = os.getloadavg()[0]
            results = time_trainer(args.warmup, args.steps, args.precision, augment, lockstep=True)
            for side in ("trainer", "bare"):
                record(side, repeat, results[side], load_before)
            continue
        for side in ("trainer", "bare") if repeat % 2 == 0 else ("bare", "trainer"):
            gc.collect()
            load_before = os.getloadavg()[0]
            if side == "trainer":
                result = time_trainer(args.warmup, args.steps, args.precision, augment, lockstep=False)["trainer"]
            else:
                result = time_bare_loop(args.warmup, args.steps, args.precision, augment)
            record(side, repeat, result, load_before)

    median = {
        side: statistics.median(r["steps_per_s"] for r in runs if r["side"] == side) for side in ("trainer", "bare")
    }
    overhead_pct = 100.0 * (median["bare"] / median["trainer"] - 1.0)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/trainer_overhead.py", *sys.argv[1:]]),
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        },
        "setup": {
            "config": "configs/quickstart.yaml with data.val=null, eval.interval=0, checkpoint.interval=0, no export",
            "precision": args.precision,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "repeats": args.repeats,
            "interleave": args.interleave,
            "augmentation": (
                "random_affine on both sides: the Trainer seeds it per sample (SeededDataset), the bare loop draws "
                "from the global RNG"
                if augment
                else "none on either side (data.train.transforms=[])"
            ),
            "timing": "sum of the step times after the warm-up steps; setup and the end-of-run checkpoint excluded",
        },
        "runs": runs,
        "median_steps_per_s": median,
        "overhead_pct": overhead_pct,
        "goal_pct": GOAL_PCT,
        "meets_goal": overhead_pct <= GOAL_PCT,
    }
    print(_table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
