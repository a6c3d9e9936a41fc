"""The engine's extension contracts under torchrun with 2 CPU ranks (DDP on gloo), against one process.

Each launch costs a few seconds of process start-up, so each test checks one contract end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_tool
from vfm.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

CONTRACTS = REPO / "tests" / "configs" / "contracts.yaml"


def dist_train(*args: str) -> subprocess.CompletedProcess:
    """tools/dist_train.sh CONTRACTS 2 args... with the test plug-ins importable."""
    from test_ddp_training import free_port

    env = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "plugins"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(REPO / "tools" / "dist_train.sh"), str(CONTRACTS), "2", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def initial_weights() -> dict[str, torch.Tensor]:
    """The objective's weights at construction (seed 0, as the Trainer builds it)."""
    import vfm_contract_plugins as plugins

    from vfm.engine.seeding import seed_everything

    seed_everything(0)
    return {k: v.clone() for k, v in plugins.LinearObjective().state_dict().items()}


def val_records(work: Path) -> list[dict]:
    return [r for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["split"].startswith("val")]


def test_trainable_selection_under_ddp(tmp_path):
    work = tmp_path / "ddp"
    assert_ok(dist_train("objective={type: test_linear, trainable: [net.weight]}", f"work_dir={work}"))
    final, initial = load_file(work / "model.safetensors"), initial_weights()
    assert sorted(k for k in final if not torch.equal(final[k], initial[k])) == ["net.weight"]
    assert len(load_checkpoint(work / "checkpoints" / "step_00000006.pt")["optimizer"]["state"]) == 1


def test_stream_resumes_after_kill_with_the_records_of_an_uninterrupted_run(tmp_path):
    """300 records, 2 ranks x 2 workers: killed after step 6, resumed from step 4, the same records in the same order."""
    stream = ["data.train={type: test_record_stream, size: 300}", "data.num_workers=2",
              "objective={type: test_linear, record_ids: true}", "train.max_steps=10", "checkpoint.interval=4"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert_ok(dist_train(*stream, f"work_dir={straight}"))
    died = dist_train(*stream, f"work_dir={killed}", "hooks=[{type: test_kill_at_step, step: 6}]")
    assert died.returncode != 0
    resumed = dist_train(*stream, f"work_dir={killed}", "resume=auto")
    assert_ok(resumed)
    assert "at step 4" in resumed.stdout
    a = load_checkpoint(straight / "checkpoints" / "step_00000010.pt")
    b = load_checkpoint(killed / "checkpoints" / "step_00000010.pt")
    seen_a, seen_b = a["objective"]["seen"], b["objective"]["seen"]
    assert seen_a == seen_b
    assert [len(s) for s in seen_a] == [40, 40]  # 10 steps x batch 4 per rank
    everything = seen_a[0] + seen_a[1]
    assert len(set(everything)) == 80  # within the epoch no record twice, none shared by the ranks
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_sum_count_losses_across_ranks_equal_one_process(tmp_path):
    """Token counts differ per micro-batch and per rank; the global token mean equals one process on the whole batch."""
    common = ["objective={type: test_linear, sum_count: true}", "checkpoint.interval=0"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_tool("train", CONTRACTS, *common, "data.batch_size=8", f"work_dir={single}", check=True)
    assert_ok(dist_train(*common, "data.batch_size=2", "train.grad_accum_steps=2", f"work_dir={ddp}"))
    a, b = load_file(single / "model.safetensors"), load_file(ddp / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)

    def losses(work: Path) -> list[float]:
        return [r["loss"] for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]

    assert losses(ddp) == pytest.approx(losses(single), rel=1e-5)
    # Only rank 1 logs 'odd_rank' (= 1.0): merged by name it is 1.0, where a positional merge would mix up keys.
    train = [r for r in map(json.loads, (ddp / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert {r["odd_rank"] for r in train} == {1.0} and all(r["tower_training"] == 1.0 for r in train)


def test_seeded_gradient_noise_keeps_replicas_identical_and_matches_one_process(tmp_path):
    noise = "hooks=[{type: test_gradient_noise, std: 0.3, seed: 5}]"
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_tool("train", CONTRACTS, noise, "data.batch_size=8", f"work_dir={single}", check=True)
    assert_ok(dist_train(noise, "data.batch_size=4", f"work_dir={ddp}"))
    assert (ddp / "replica_0.txt").read_text() == (ddp / "replica_1.txt").read_text()
    a, b = load_file(single / "model.safetensors"), load_file(ddp / "model.safetensors")
    initial = initial_weights()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
        assert not torch.equal(a[key], initial[key])


def test_named_eval_sets_under_ddp_equal_one_process(tmp_path):
    """Two sets with their own evaluators and intervals; best.pt by one of them; an evaluator that embeds prompts
    with the model in begin() gives the same gathered results on 2 ranks as tools/eval.py in one process."""
    sets = ("eval.sets={a: {dataset: {type: test_records, size: 30, seed: 1}, evaluators: [{type: test_mse}], interval: 2},"
            " b: {dataset: {type: test_records, size: 21, seed: 2}, evaluators: [{type: test_prompt_accuracy}], interval: 3}}")
    work = tmp_path / "ddp"
    assert_ok(dist_train(sets, "eval.metric=b/accuracy", f"work_dir={work}"))
    logged = [(r["split"], r["step"]) for r in val_records(work)]
    assert logged == [("val/a", 2), ("val/b", 3), ("val/a", 4), ("val/a", 6), ("val/b", 6)]
    best = load_checkpoint(work / "checkpoints" / "best.pt")
    b_records = [r for r in val_records(work) if r["split"] == "val/b"]
    top = max(b_records, key=lambda r: r["accuracy"])
    assert best["best"] == {"metric": "b/accuracy", "value": top["accuracy"], "step": best["step"]}
    out = run_tool("eval", work / "config.yaml", work / "model.safetensors", "--set", "b", "--out", tmp_path / "m.json", check=True)
    assert "b/accuracy" in out.stdout and "a/mse" not in out.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    final_b = b_records[-1]
    assert metrics["b/accuracy"] == final_b["accuracy"] and metrics["b/count"] == 21.0
    assert metrics["b/median_distance"] == pytest.approx(final_b["median_distance"], rel=1e-6)
