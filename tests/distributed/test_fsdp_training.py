"""The Trainer with FSDP2 under torchrun (2 CPU processes, gloo) against one process on the same global batch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_ddp_training import SGD, VIT, assert_ok, dist_train

from conftest import TINY, run_tool
from vfm.engine.checkpoint import CheckpointManager, load_checkpoint

pytestmark = pytest.mark.slow

FSDP = ["dist.strategy=fsdp", "ema.enabled=false", "data.batch_size=8"]


def test_fsdp_matches_one_process_and_resumes_exactly(tmp_path):
    single, fsdp, killed = tmp_path / "single", tmp_path / "fsdp", tmp_path / "killed"
    run_tool("train", TINY, VIT, SGD, "ema.enabled=false", "data.batch_size=16", f"work_dir={single}", check=True)
    assert_ok(dist_train(*FSDP, f"work_dir={fsdp}"))
    a, b = load_file(single / "model.safetensors"), load_file(fsdp / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    # Sharded checkpoints are folders written by DCP; best weights are gathered into safetensors.
    newest = CheckpointManager(fsdp).step_checkpoints()[0]
    assert newest.is_dir() and newest.name == "step_00000008"
    assert load_checkpoint(newest)["strategy"] == "fsdp"
    assert (fsdp / "checkpoints" / "best.safetensors").is_file()

    died = dist_train(*FSDP, f"work_dir={killed}", "hooks=[{type: test_kill_at_step, step: 5}]")
    assert died.returncode != 0
    assert not any(p.name.endswith(".tmp") for p in (killed / "checkpoints").iterdir() if p.name.startswith("step"))
    resumed = dist_train(*FSDP, f"work_dir={killed}", "resume=auto")
    assert_ok(resumed)
    assert "at step 4" in resumed.stdout
    c = load_file(killed / "model.safetensors")
    assert all(torch.equal(b[key], c[key]) for key in b)


def test_fsdp_refuses_a_single_process_checkpoint(tmp_path):
    """A full-state checkpoint cannot resume under FSDP: a clear error, exit 2."""
    work = tmp_path / "run"
    run_tool("train", TINY, VIT, SGD, "ema.enabled=false", "train.max_steps=2", f"work_dir={work}", check=True)
    result = dist_train(*FSDP, f"work_dir={work}", "resume=auto")
    assert result.returncode != 0
    assert "a single checkpoint cannot resume under dist.strategy=fsdp" in result.stderr
