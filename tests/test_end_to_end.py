"""End-to-end runs of tools/train.py and tools/eval.py on the tiny digits config."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_tool
from vfm.engine.checkpoint import CheckpointManager, load_checkpoint

pytestmark = pytest.mark.slow


def _weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_quickstart_few_steps_writes_everything(tmp_path, tiny_config):
    """A short run writes the resolved config, metrics, checkpoints, best.pt and safetensors weights."""
    work = tmp_path / "run"
    result = run_tool("train", tiny_config, f"work_dir={work}", check=True)
    assert "step 8/8" in result.stdout
    for name in ("config.yaml", "metrics.jsonl", "last_checkpoint", "model.safetensors", "train.log", "checkpoints/best.pt"):
        assert (work / name).is_file(), name
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [2, 4, 6, 8]
    assert {"loss", "lr", "samples_per_s", "eta_s", "peak_mem_mb"} <= set(records[0])
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [4, 8] and 0.0 <= val[-1]["accuracy"] <= 1.0
    # keep_last=2 of the quickstart: steps 4 and 8 remain; the pointer names the newest.
    assert (work / "last_checkpoint").read_text() == "checkpoints/step_00000008.pt"
    assert [p.name for p in CheckpointManager(work).step_checkpoints()] == ["step_00000008.pt", "step_00000004.pt"]

    # eval.py on the written config and best checkpoint reproduces the best recorded accuracy.
    best = load_checkpoint(work / "checkpoints" / "best.pt")
    out = run_tool("eval", work / "config.yaml", work / "checkpoints" / "best.pt", "--out", tmp_path / "m.json", check=True)
    assert "accuracy" in out.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["accuracy"] == pytest.approx(best["best"]["value"], abs=1e-9)


def test_resume_after_kill_is_bit_identical(tmp_path, tiny_config):
    """2N straight steps == N steps, `kill -9`, resume=auto for the rest (weights, EMA, bit for bit)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_tool("train", tiny_config, f"work_dir={straight}", check=True)

    # Killed right after step 5: the newest checkpoint is step 4, so steps 5.. are redone.
    died = run_tool("train", tiny_config, f"work_dir={killed}", "hooks=[{type: test_kill_at_step, step: 5}]")
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    assert (killed / "last_checkpoint").read_text() == "checkpoints/step_00000004.pt"
    resumed = run_tool("train", tiny_config, f"work_dir={killed}", "resume=auto", check=True)
    assert "resumed from" in resumed.stdout and "at step 4" in resumed.stdout

    assert _weights_equal(load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors"))
    a = load_checkpoint(straight / "checkpoints" / "step_00000008.pt")
    b = load_checkpoint(killed / "checkpoints" / "step_00000008.pt")
    assert _weights_equal(a["model"], b["model"]) and _weights_equal(a["ema"], b["ema"])
    assert a["data"] == b["data"] and a["step"] == b["step"] == 8
    # Both runs logged the same losses for the steps after the resume point.
    def losses(work):
        return {r["step"]: r["loss"] for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"}
    assert {s: v for s, v in losses(killed).items() if s > 4} == {s: v for s, v in losses(straight).items() if s > 4}


def test_kill_during_checkpoint_write_keeps_previous(tmp_path, tiny_config):
    """A process killed in the middle of writing a checkpoint leaves the previous one loadable and resumable."""
    work = tmp_path / "run"
    args = [tiny_config, f"work_dir={work}", "checkpoint.interval=2", "checkpoint.keep_last=5", "eval.interval=0"]
    died = run_tool("train", *args, "hooks=[{type: test_kill_during_checkpoint, step: 6}]")
    assert died.returncode == -signal.SIGKILL
    assert (work / "last_checkpoint").read_text() == "checkpoints/step_00000004.pt"
    assert not (work / "checkpoints" / "step_00000006.pt").exists()  # only a temp file, never the real name
    assert load_checkpoint(work / "checkpoints" / "step_00000004.pt")["step"] == 4
    resumed = run_tool("train", *args, "resume=auto", check=True)
    assert "at step 4" in resumed.stdout
    assert load_checkpoint(work / "checkpoints" / "step_00000008.pt")["step"] == 8


def test_resume_auto_falls_back_from_corrupt_newest(tmp_path, tiny_config):
    """A corrupt newest checkpoint under resume=auto is skipped with a warning; the previous one is used."""
    work = tmp_path / "run"
    run_tool("train", tiny_config, f"work_dir={work}", "checkpoint.interval=2", "checkpoint.keep_last=5", check=True)
    newest = work / "checkpoints" / "step_00000008.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as after a full disk
    result = run_tool("train", tiny_config, f"work_dir={work}", "checkpoint.interval=2", "checkpoint.keep_last=5", "resume=auto", check=True)
    assert "skipping" in result.stdout and "step_00000008.pt" in result.stdout
    assert "resumed from" in result.stdout and "at step 6" in result.stdout
    assert load_checkpoint(newest)["step"] == 8  # rewritten whole by the resumed run


def test_nan_loss_stops_with_step_and_writes_no_checkpoint(tmp_path, tiny_config):
    """A NaN loss stops the run naming the step; no checkpoint holds post-NaN state."""
    work = tmp_path / "run"
    result = run_tool("train", tiny_config, f"work_dir={work}", "objective.type=test_nan_classification",
                      "+objective.nan_calls=[5]", "checkpoint.interval=1", "checkpoint.keep_last=10")
    assert result.returncode == 2
    assert "error: step 3: loss is nan" in result.stderr and "Traceback" not in result.stderr
    steps = sorted(load_checkpoint(p)["step"] for p in CheckpointManager(work).step_checkpoints())
    assert steps == [1, 2]
    assert not (work / "model.safetensors").exists()


def test_nan_loss_skip_mode_skips_the_step(tmp_path, tiny_config):
    """With train.nonfinite=skip the poisoned step is dropped and training finishes with finite weights."""
    work = tmp_path / "run"
    result = run_tool("train", tiny_config, f"work_dir={work}", "objective.type=test_nan_classification",
                      "+objective.nan_calls=[5]", "train.nonfinite=skip", check=True)
    assert "step 3: loss is nan; skipping the step" in result.stdout
    weights = load_file(work / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_load_from_reports_and_loads_weights(tmp_path, tiny_config):
    """load_from initialises from a safetensors export; eval of that init equals eval of the source."""
    source = tmp_path / "source"
    run_tool("train", tiny_config, f"work_dir={source}", "ema.enabled=false", check=True)
    target = tmp_path / "target"
    result = run_tool("train", tiny_config, f"work_dir={target}", f"load_from={source / 'model.safetensors'}",
                      "train.max_steps=2", "optim.lr=0.0", "ema.enabled=false", "objective.backbone.drop_rate=0.0", check=True)
    assert result.returncode == 0
    # BatchNorm running statistics move even at lr 0, so compare the convolution weights only.
    a, b = load_file(source / "model.safetensors"), load_file(target / "model.safetensors")
    conv = [k for k in a if k.endswith("conv1.weight")]
    assert conv and all(torch.equal(a[k], b[k]) for k in conv)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGUSR1"])
def test_preemption_signal_checkpoints_and_resume_is_exact(tmp_path, tiny_config, signal_name):
    """SIGTERM/SIGUSR1 mid-run: the step finishes, a checkpoint is written, exit 0; resume=auto ends bit-identical."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_tool("train", tiny_config, f"work_dir={straight}", check=True)
    result = run_tool("train", tiny_config, f"work_dir={stopped}", f"hooks=[{{type: test_signal_at_step, step: 3, signal_name: {signal_name}}}]")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"stopped by {signal_name} after step 3" in result.stdout
    assert (stopped / "last_checkpoint").read_text() == "checkpoints/step_00000003.pt"
    assert not (stopped / "model.safetensors").exists()
    run_tool("train", tiny_config, f"work_dir={stopped}", "resume=auto", check=True)
    assert _weights_equal(load_file(straight / "model.safetensors"), load_file(stopped / "model.safetensors"))
