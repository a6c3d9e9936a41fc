"""The Trainer under torchrun with 2 CPU processes (DDP on gloo) against one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TINY, run_tool
from vfm.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

# BatchNorm-free and dropout-free, so that 2 x 8 samples per rank equal 16 samples in one process.
VIT = "objective.backbone={type: timm, name: vit_tiny_patch16_224, img_size: 16, patch_size: 8, depth: 1, in_chans: 1}"
# SGD, not AdamW: Adam divides by the gradient's own scale, which turns the float noise of exactly-zero gradients
# (the attention key bias) into full-size steps and would hide a x2 gradient error anyway.
SGD = "optim={type: sgd, lr: 0.05, momentum: 0.9}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dist_train(*args: str) -> subprocess.CompletedProcess:
    """tools/dist_train.sh TINY 2 args... with the test plug-ins importable."""
    env = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "plugins"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(REPO / "tools" / "dist_train.sh"), str(TINY), "2", VIT, SGD, *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_ddp_matches_one_process_and_resumes_exactly(tmp_path):
    single, ddp, killed = tmp_path / "single", tmp_path / "ddp", tmp_path / "killed"
    # One process with batch 16 == two ranks with batch 8 each: the sampler deals the same 16 samples.
    run_tool("train", TINY, VIT, SGD, "data.batch_size=16", f"work_dir={single}", check=True)
    result = dist_train("data.batch_size=8", f"work_dir={ddp}")
    assert_ok(result)
    assert "2 processes (torchrun)" in result.stdout
    a, b = load_file(single / "model.safetensors"), load_file(ddp / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # gloo AVG summing instead of averaging (PyTorch #162338) would be off by far more
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    # Evaluation is sharded over ranks and reduced: the same held-out accuracy as one process
    # (one sample of 360 may flip with weights that differ in the 6th digit).
    def val_accuracy(work):
        return [r for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"][-1]["accuracy"]
    assert val_accuracy(ddp) == pytest.approx(val_accuracy(single), abs=1.01 / 360)
    state = load_checkpoint(ddp / "checkpoints" / "step_00000008.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2

    # Killed after step 5 on both ranks, then resumed with resume=auto: bit-identical to the straight DDP run.
    died = dist_train("data.batch_size=8", f"work_dir={killed}", "hooks=[{type: test_kill_at_step, step: 5}]")
    assert died.returncode != 0
    resumed = dist_train("data.batch_size=8", f"work_dir={killed}", "resume=auto")
    assert_ok(resumed)
    assert "at step 4" in resumed.stdout
    c = load_file(killed / "model.safetensors")
    assert all(torch.equal(b[key], c[key]) for key in b)

    # Only rank 1 gets Slurm's warning signal: both ranks still stop after the same step, with one checkpoint.
    preempted = tmp_path / "preempted"
    stopped = dist_train("data.batch_size=8", f"work_dir={preempted}",
                         "hooks=[{type: test_signal_at_step, step: 3, signal_name: SIGUSR1, only_rank: 1}]")
    assert_ok(stopped)
    assert "stopped by a signal on another rank after step 3" in stopped.stdout
    assert (preempted / "last_checkpoint").read_text() == "checkpoints/step_00000003.pt"
    assert_ok(dist_train("data.batch_size=8", f"work_dir={preempted}", "resume=auto"))
    d = load_file(preempted / "model.safetensors")
    assert all(torch.equal(b[key], d[key]) for key in b)


def test_ddp_checkpoint_resumes_in_one_process(tmp_path):
    """A 2-rank checkpoint continues in one process (DDP state is a plain full state dict)."""
    work = tmp_path / "run"
    assert_ok(dist_train("data.batch_size=8", f"work_dir={work}", "train.max_steps=4", "checkpoint.interval=2",
                         "checkpoint.keep_last=5"))
    result = run_tool("train", TINY, VIT, SGD, "data.batch_size=16", f"work_dir={work}", "train.max_steps=6",
                      "resume=checkpoints/step_00000004.pt".replace("checkpoints", str(work / "checkpoints")), check=True)
    assert "RNG states for 2 ranks, this run has 1" in result.stdout
    assert load_checkpoint(work / "checkpoints" / "step_00000006.pt")["step"] == 6
