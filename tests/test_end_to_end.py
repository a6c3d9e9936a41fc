"""End-to-end runs of tools/train.py and tools/eval.py on the tiny digits config."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TINY, run_tool
from vfm.engine.checkpoint import CheckpointManager, load_checkpoint

pytestmark = pytest.mark.slow


def _weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted run of the tiny config, the reference of the interrupted runs below; read it, never write."""
    work = tmp_path_factory.mktemp("straight") / "run"
    return work, run_tool("train", TINY, f"work_dir={work}", check=True)


def test_quickstart_few_steps_writes_everything(tmp_path, straight_run):
    """A short run writes the resolved config, metrics, checkpoints, best.pt and safetensors weights."""
    work, result = straight_run
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


def test_resume_after_kill_is_bit_identical(tmp_path, tiny_config, straight_run):
    """2N straight steps == N steps, `kill -9`, resume=auto for the rest (weights, EMA, bit for bit)."""
    (straight, _), killed = straight_run, tmp_path / "killed"

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
    # Steps 5 and 6 ran twice (killed after 5, resumed from 4), yet metrics.jsonl has each record once, as straight has.
    def records(work):
        return [(r["step"], r["split"]) for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines())]
    assert records(killed) == records(straight)


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
                      "train.max_steps=2", "hooks=[{type: freeze_parameters, patterns: ['*conv*']}]", "ema.enabled=false",
                      "objective.backbone.drop_rate=0.0", check=True)
    assert result.returncode == 0
    # The convolutions are frozen (a zero lr is refused); the other weights and BatchNorm statistics move.
    a, b = load_file(source / "model.safetensors"), load_file(target / "model.safetensors")
    conv = [k for k in a if k.endswith("conv1.weight")]
    assert conv and all(torch.equal(a[k], b[k]) for k in conv)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_preemption_signal_checkpoints_and_resume_is_exact(tmp_path, tiny_config, signal_name, straight_run):
    """SIGTERM/SIGUSR1/Ctrl-C mid-run: the step finishes, a checkpoint is written, exit 0; resume=auto ends
    bit-identical."""
    (straight, _), stopped = straight_run, tmp_path / "stopped"
    result = run_tool("train", tiny_config, f"work_dir={stopped}", f"hooks=[{{type: test_signal_at_step, step: 3, signal_name: {signal_name}}}]")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"stopped by {signal_name} after step 3" in result.stdout
    assert (stopped / "last_checkpoint").read_text() == "checkpoints/step_00000003.pt"
    assert not (stopped / "model.safetensors").exists()
    run_tool("train", tiny_config, f"work_dir={stopped}", "resume=auto", check=True)
    assert _weights_equal(load_file(straight / "model.safetensors"), load_file(stopped / "model.safetensors"))


CONTRACTS = REPO / "tests" / "configs" / "contracts.yaml"


def _snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fresh_run_in_a_used_work_dir_is_refused_then_overwrite_starts_afresh(tmp_path):
    """A fresh run never adopts or prunes another run's checkpoints: refused with the choices, or overwrite."""
    work = tmp_path / "run"
    run_tool("train", CONTRACTS, f"work_dir={work}", check=True)
    before = _snapshot(work)
    refused = run_tool("train", CONTRACTS, f"work_dir={work}", "train.max_steps=2")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and str(work) in lines[0], lines
    for choice in ("resume=auto", "a new work_dir", "checkpoint.overwrite=true"):
        assert choice in lines[0], (choice, lines[0])
    assert _snapshot(work) == before  # nothing written, nothing deleted

    fresh = run_tool("train", CONTRACTS, f"work_dir={work}", "train.max_steps=2", "checkpoint.overwrite=true", check=True)
    assert "deleted 4 checkpoint file(s) of an earlier run" in fresh.stdout
    assert [p.name for p in CheckpointManager(work).step_checkpoints()] == ["step_00000002.pt"]
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in records}) == [1, 2]  # the old run's log went with its checkpoints
    resumed = run_tool("train", CONTRACTS, f"work_dir={work}", "resume=auto", check=True)
    assert "at step 2" in resumed.stdout  # the new run continues, not the old one
    assert load_checkpoint(work / "checkpoints" / "step_00000006.pt")["run_id"] == load_checkpoint(
        work / "checkpoints" / "step_00000002.pt")["run_id"]


def test_restart_over_corrupt_checkpoints_keeps_its_own(tmp_path):
    """Every step checkpoint corrupt: the restart starts from scratch and its new checkpoints are not pruned."""
    work = tmp_path / "run"
    run_tool("train", CONTRACTS, f"work_dir={work}", check=True)
    for path in CheckpointManager(work).step_checkpoints():
        path.write_bytes(path.read_bytes()[:200])
    (work / "checkpoints" / ".step_00000008.pt.4242424.tmp").write_bytes(b"a killed write")
    restart = run_tool("train", CONTRACTS, f"work_dir={work}", "resume=auto", "train.max_steps=4",
                       "checkpoint.keep_last=1", check=True)
    assert "removed 1 temp file(s) of interrupted writes" in restart.stdout
    assert (work / "last_checkpoint").read_text() == "checkpoints/step_00000004.pt"
    assert load_checkpoint(work / "checkpoints" / "step_00000004.pt")["step"] == 4
    assert not (work / "checkpoints" / "step_00000002.pt").exists()  # the restart's own older one was pruned
    assert (work / "checkpoints" / "step_00000006.pt").is_file()  # the corrupt file is nobody's: left alone
    assert not (work / "checkpoints" / ".step_00000008.pt.4242424.tmp").exists()


def test_metrics_after_a_resume_hold_each_step_once(tmp_path):
    """Killed after step 5 (newest checkpoint: 4), resumed: step 5 runs twice but is recorded once."""
    work = tmp_path / "run"
    died = run_tool("train", CONTRACTS, f"work_dir={work}", "hooks=[{type: test_kill_at_step, step: 5}]")
    assert died.returncode == -signal.SIGKILL
    logged = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5]  # the killed run got to log step 5
    run_tool("train", CONTRACTS, f"work_dir={work}", "resume=auto", check=True)
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    straight = tmp_path / "straight"
    run_tool("train", CONTRACTS, f"work_dir={straight}", check=True)
    expected = [json.loads(line)["loss"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == expected  # one record per step, with the losses of a straight run


def test_ctrl_c_with_loader_workers_and_a_second_ctrl_c(tmp_path):
    """Ctrl-C (to the whole process group, as a terminal sends it) while a step still needs batches from the
    DataLoader workers: the step finishes, a checkpoint, exit 0; a second Ctrl-C aborts at once, exit 130."""
    work = tmp_path / "run"
    # 8 micro-batches a step: more than the workers have prefetched when the signal comes.
    once = run_tool("train", CONTRACTS, f"work_dir={work}", "data.num_workers=2", "train.grad_accum_steps=8",
                    "data.train.size=400", "hooks=[{type: test_signal_at_step, step: 3, signal_name: SIGINT, "
                    "process_group: true, during_step: true}]")
    assert once.returncode == 0, once.stderr[-2000:]
    assert "Ctrl-C: finishing step 3" in once.stdout and "stopped by SIGINT after step 3" in once.stdout
    assert once.stdout.count("Ctrl-C:") == 1  # the workers ignore it (forked, they would run the Trainer's handler)
    assert (work / "last_checkpoint").read_text() == "checkpoints/step_00000003.pt"
    twice = tmp_path / "twice"
    aborted = run_tool("train", CONTRACTS, f"work_dir={twice}", "checkpoint.interval=0",
                       "hooks=[{type: test_signal_at_step, step: 3, signal_name: SIGINT, times: 2}]")
    assert aborted.returncode == 130 and aborted.stderr.strip() == "interrupted", aborted.stderr[-2000:]
    assert not (twice / "checkpoints").exists() and not (twice / "model.safetensors").exists()
