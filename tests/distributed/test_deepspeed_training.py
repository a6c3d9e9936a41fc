"""The Trainer with DeepSpeed ZeRO 1/2/3 under torchrun (2 CPU processes, gloo) against one process on the same batch."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from safetensors.torch import load_file
from test_ddp_training import SGD, VIT, assert_ok, dist_train

from conftest import TINY, run_tool
from vfm.engine.checkpoint import CheckpointManager, load_checkpoint

pytestmark = pytest.mark.slow

# Clipping at 1.0 is active on these steps (the logged norms are ~2), so it is DeepSpeed's clipping that must match ours.
COMMON = ["train.clip_grad_norm=1.0"]


@pytest.fixture(autouse=True)
def _require_deepspeed():
    if importlib.util.find_spec("deepspeed") is None:
        if os.environ.get("VFM_REQUIRE_DEEPSPEED") == "1":
            pytest.fail("VFM_REQUIRE_DEEPSPEED=1 but deepspeed is not installed: pip install 'vfm[deepspeed]'")
        pytest.skip("deepspeed is not installed (pip install 'vfm[deepspeed]')")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, batch 16 (= 2 ranks x 8), with and without EMA: the weights every DeepSpeed run must match."""
    runs = {}
    for ema in (True, False):
        work = tmp_path_factory.mktemp(f"single_ema_{ema}")
        run_tool("train", TINY, VIT, SGD, *COMMON, f"ema.enabled={str(ema).lower()}", "data.batch_size=16",
                 f"work_dir={work}", check=True)
        runs[ema] = load_file(work / "model.safetensors")
    return runs


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:  # gloo's AVG summing instead of averaging (PyTorch #162338) would be off by far more
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_matches_one_process(reference, tmp_path, stage):
    ema = stage < 3  # EMA of ZeRO-3's partitioned parameters is refused
    result = dist_train("dist.strategy=deepspeed", f"dist.deepspeed.zero_stage={stage}", *COMMON, f"ema.enabled={str(ema).lower()}",
                        "data.batch_size=8", f"work_dir={tmp_path}")
    assert_ok(result)
    assert "grad_norm" in result.stdout  # DeepSpeed's own norm is logged
    assert_same_weights(load_file(tmp_path / "model.safetensors"), reference[ema])
    newest = CheckpointManager(tmp_path).step_checkpoints()[0]
    assert newest.is_dir() and (newest / "vfm").is_dir()  # DeepSpeed's checkpoint folder, tag vfm
    assert load_checkpoint(newest)["strategy"] == "deepspeed"


def test_deepspeed_resumes_exactly_and_refuses_another_world_size(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    options = ["dist.strategy=deepspeed", "dist.deepspeed.zero_stage=3", *COMMON, "ema.enabled=false", "data.batch_size=8"]
    assert_ok(dist_train(*options, f"work_dir={straight}"))
    died = dist_train(*options, f"work_dir={killed}", "hooks=[{type: test_kill_at_step, step: 5}]")
    assert died.returncode != 0
    resumed = dist_train(*options, f"work_dir={killed}", "resume=auto")
    assert_ok(resumed)
    assert "at step 4" in resumed.stdout
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)

    # ZeRO partitions optimizer state per rank: one process cannot resume it, and says how to convert.
    one = run_tool("train", TINY, VIT, SGD, *options, "data.batch_size=16", f"work_dir={straight}", "resume=auto")
    assert one.returncode == 2
    assert "cannot resume with world size 1" in one.stderr and "ds_to_universal" in one.stderr


def test_deepspeed_in_one_process_matches_the_single_strategy(reference, tmp_path):
    """Without a launcher vfm gives DeepSpeed a one-rank process group (it would look for MPI otherwise)."""
    result = run_tool("train", TINY, VIT, SGD, "dist.strategy=deepspeed", "dist.deepspeed.zero_stage=1", *COMMON,
                      "ema.enabled=true", "data.batch_size=16", f"work_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(load_file(tmp_path / "model.safetensors"), reference[True])
