"""The engine's extension contracts, one small test objective each (tests/plugins/vfm_contract_plugins.py), in one process.

Multi-rank versions of the same contracts are in tests/distributed/test_contracts_ddp.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import vfm_contract_plugins as plugins

from conftest import REPO, run_tool
from vfm.config import load_config
from vfm.engine.checkpoint import load_checkpoint
from vfm.engine.run_config import RunConfig
from vfm.engine.trainer import Trainer
from vfm.errors import CheckpointError, ConfigError, VfmError
from vfm.weights import load_state_dict_file, save_safetensors

CONTRACTS = REPO / "tests" / "configs" / "contracts.yaml"


def make_trainer(tmp_path: Path, *overrides: str) -> Trainer:
    cfg = load_config(CONTRACTS, [f"work_dir={tmp_path}", *overrides], RunConfig)
    return Trainer(cfg, cfg.work_dir)


def records(work: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.fixture(autouse=True)
def _clear_recorded():
    plugins.RECORDED.clear()
    yield
    plugins.RECORDED.clear()


# ------------------------------------------------------------------------------- on_optimizer_step
def test_teacher_follows_its_momentum_schedule_and_skips_skipped_steps(tmp_path):
    trainer = make_trainer(tmp_path, "objective={type: test_linear, teacher_momentum: 0.9}", "train.nonfinite=skip",
                           "train.clip_grad_norm=100.0",
                           "hooks=[{type: test_record_step}]", "checkpoint.interval=0")
    expected = {k: v.clone() for k, v in trainer.objective.net.state_dict().items()}
    # Step 3's gradients are NaN: the step is skipped, and so is the teacher update.
    trainer.objective.net.weight.register_hook(lambda g: g * float("nan") if trainer.step == 2 else g)
    trainer.train()
    updates = trainer.objective.teacher_updates
    assert [s for s, _ in updates] == [1, 2, 4, 5, 6]
    for (step, m), seen in zip(updates, [r for r in plugins.RECORDED if r["outputs"]], strict=True):
        assert m == trainer.objective.momentum(step, 6) and seen["step"] == step
        for key, value in seen["net"].items():
            expected[key].mul_(m).add_(value, alpha=1 - m)
    for key in expected:
        assert torch.equal(trainer.objective.teacher[key], expected[key])


def test_teacher_state_survives_kill_and_resume_bit_identically(tmp_path):
    teacher = "objective={type: test_linear, teacher_momentum: 0.9, tower_dropout: 0.2}"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_tool("train", CONTRACTS, teacher, f"work_dir={straight}", check=True)
    died = run_tool("train", CONTRACTS, teacher, f"work_dir={killed}", "hooks=[{type: test_kill_at_step, step: 5}]")
    assert died.returncode != 0
    resumed = run_tool("train", CONTRACTS, teacher, f"work_dir={killed}", "resume=auto", check=True)
    assert "at step 4" in resumed.stdout
    a = load_checkpoint(straight / "checkpoints" / "step_00000006.pt")
    b = load_checkpoint(killed / "checkpoints" / "step_00000006.pt")
    assert a["objective"]["updates"] == b["objective"]["updates"] and len(a["objective"]["updates"]) == 6
    assert all(torch.equal(a["objective"]["teacher"][k], b["objective"]["teacher"][k]) for k in a["objective"]["teacher"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# -------------------------------------------------------------------------------- trainable selection
def test_trainable_selection_changes_only_the_selected_tensors(tmp_path):
    trainer = make_trainer(tmp_path, "objective={type: test_linear, trainable: [net.weight]}", "train.max_steps=1",
                           "hooks=[{type: test_record_step}]", "ema.enabled=true", "train.clip_grad_norm=0.01")
    before = {k: v.clone() for k, v in trainer.objective.state_dict().items()}
    trainer.train()
    after = plugins.RECORDED[-1]["state"]
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["net.weight"]
    assert plugins.RECORDED[-1]["optimizer_state_count"] == 1  # momentum only for the one trainable tensor
    assert {id(p) for group in trainer.optimizer.param_groups for p in group["params"]} == {id(trainer.objective.net.weight)}
    assert trainer.ema.frozen == {"tower.0.weight", "tower.0.bias", "net.bias"}


def test_selection_of_unknown_names_or_nothing_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"trainable_parameters\(\): 1 names are not parameters of the objective \(e.g. 'net.wieght'\)"):
        make_trainer(tmp_path, "objective={type: test_linear, trainable: [net.wieght]}")
    with pytest.raises(ConfigError, match="selects no parameter"):
        make_trainer(tmp_path, "objective={type: test_linear, trainable: []}")


def test_freeze_hook_freezes_before_the_optimizer_and_refuses_patterns_that_match_nothing(tmp_path):
    trainer = make_trainer(tmp_path, "hooks=[{type: freeze_parameters, patterns: ['tower.*']}]")
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainer.objective.net.parameters()}
    result = run_tool("train", CONTRACTS, f"work_dir={tmp_path / 'x'}", "hooks=[{type: freeze_parameters, patterns: ['towr.*']}]")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: hooks: freeze_parameters pattern 'towr.*' matches no parameter of the objective (e.g. tower.0.weight, "
        "tower.0.bias, net.weight)"]


def test_frozen_submodule_stays_in_eval_mode(tmp_path):
    trainer = make_trainer(tmp_path, "objective={type: test_linear, trainable: [net.weight, net.bias], tower_dropout: 0.5}",
                           "train.max_steps=2")
    trainer.train()
    assert [r["tower_training"] for r in records(tmp_path)] == [0.0, 0.0]
    trained = make_trainer(tmp_path / "b", "objective={type: test_linear, tower_dropout: 0.5}", "train.max_steps=1")
    trained.train()
    assert records(tmp_path / "b")[0]["tower_training"] == 1.0


# --------------------------------------------------------------------------------- (sum, count) losses
def test_sum_count_losses_equal_the_concatenated_batch(tmp_path):
    """Accumulating 3 micro-batches whose token counts differ == one batch of all of them (global token mean)."""
    common = ["objective={type: test_linear, sum_count: true}", "train.max_steps=3", "hooks=[{type: test_record_step}]",
              "checkpoint.interval=0"]
    accumulated = make_trainer(tmp_path / "a", *common, "data.batch_size=4", "train.grad_accum_steps=3")
    accumulated.train()
    a = [dict(r) for r in plugins.RECORDED]
    plugins.RECORDED.clear()
    make_trainer(tmp_path / "b", *common, "data.batch_size=12").train()
    b = list(plugins.RECORDED)
    for x, y in zip(a, b, strict=True):
        assert x["outputs"]["loss"] == pytest.approx(y["outputs"]["loss"], rel=1e-6)
        for key in x["net"]:
            torch.testing.assert_close(x["net"][key], y["net"][key], rtol=1e-6, atol=1e-7)
    # A plain mean over micro-batches would weight records differently: the test can tell the two apart.
    plugins.RECORDED.clear()
    make_trainer(tmp_path / "c", *common[1:], "data.batch_size=4", "train.grad_accum_steps=3").train()
    assert not torch.allclose(plugins.RECORDED[0]["net"]["weight"], b[0]["net"]["weight"], rtol=1e-6, atol=1e-7)


def test_missing_loss_is_one_line_naming_the_objective(tmp_path):
    result = run_tool("train", CONTRACTS, f"work_dir={tmp_path}", "objective={type: test_no_loss}")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: objective.type=test_no_loss: forward(batch) must return a dict with a 'loss' "
                                     "entry, got ['los']")


# ---------------------------------------------------------------------------------- objective owns backward
def test_objective_that_owns_its_backward_gets_its_own_gradients_applied(tmp_path):
    trainer = make_trainer(tmp_path, "objective={type: test_linear, per_sample_clip: 0.05}", "train.max_steps=1",
                           "optim={type: sgd, lr: 0.1, momentum: 0.0, weight_decay: 0.0}", "data.batch_size=8")
    initial = {k: v.clone() for k, v in trainer.objective.state_dict().items()}
    keys = next(iter(trainer.train_loader.batch_sampler))  # the first batch the run will draw
    batch = torch.utils.data.default_collate([plugins.make_record(index) for _, index in keys])
    trainer.train()
    # Reference: per-sample gradients by a loop, each clipped to 0.05, averaged; one SGD step of lr 0.1.
    reference = plugins.LinearObjective()
    reference.load_state_dict(initial)
    grads = []
    for x, y in zip(batch["x"], batch["y"], strict=True):
        reference.zero_grad()
        torch.nn.functional.mse_loss(reference.net(reference.tower(x[None])), y[None]).backward()
        g = {n: p.grad.clone() for n, p in reference.named_parameters()}
        norm = torch.sqrt(sum(v.pow(2).sum() for v in g.values()))
        grads.append({n: v * min(1.0, 0.05 / (norm.item() + 1e-12)) for n, v in g.items()})
    for name, value in trainer.objective.named_parameters():
        expected = initial[name] - 0.1 * torch.stack([g[name] for g in grads]).mean(0)
        torch.testing.assert_close(value.detach(), expected, rtol=1e-5, atol=1e-7)
    assert records(tmp_path)[0]["clipped_fraction"] > 0  # clipping was active


# ------------------------------------------------------------------------------------- requirements
def test_requirements_violation_is_one_line_naming_both_keys(tmp_path):
    result = run_tool("train", CONTRACTS, f"work_dir={tmp_path}", "objective={type: test_linear, strategies: [single, ddp]}",
                      "dist.strategy=fsdp")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: dist.strategy: 'fsdp' is not supported by objective.type=test_linear "
                                     "(supports single, ddp)")
    owns = run_tool("train", CONTRACTS, f"work_dir={tmp_path}", "objective={type: test_linear, per_sample_clip: 1.0}",
                    "dist.strategy=deepspeed")
    assert owns.returncode == 2 and "dist.strategy: 'deepspeed' cannot reduce gradients that objective.type=test_linear" in owns.stderr


# ------------------------------------------------------------------------------- checkpoint filter
def test_frozen_state_is_left_out_of_step_checkpoints_and_checked_on_resume(tmp_path):
    tower = tmp_path / "tower.safetensors"
    save_safetensors(plugins.LinearObjective().tower[0].state_dict(), tower)
    frozen = f"objective={{type: test_linear, frozen_tower: {tower}}}"
    work = tmp_path / "run"
    make_trainer(work, frozen, "train.max_steps=4").train()
    state = load_checkpoint(work / "checkpoints" / "step_00000004.pt")
    assert "tower.0.weight" not in state["model"] and "net.weight" in state["model"]
    assert state["frozen"]["keys"] == ["tower.0.weight", "tower.0.bias"]
    resumed = make_trainer(work, frozen, "train.max_steps=6", "resume=auto")
    resumed.train()
    assert resumed.step == 6
    saved_tower = load_state_dict_file(tower)
    assert torch.equal(resumed.objective.tower[0].weight.detach(), saved_tower["weight"])  # rebuilt from its source
    # The source changed: the resume refuses instead of continuing with other frozen weights.
    other = plugins.LinearObjective()
    with torch.no_grad():
        other.tower[0].weight.add_(1.0)
    save_safetensors(other.tower[0].state_dict(), tower)
    with pytest.raises(CheckpointError, match="frozen weights .* differ from those the run started with"):
        make_trainer(work, frozen, "train.max_steps=8", "resume=auto").train()


# -------------------------------------------------------------------------------------- hooks
def test_after_backward_sees_the_final_gradients_and_hook_state_is_checkpointed(tmp_path):
    trainer = make_trainer(tmp_path, "hooks=[{type: test_gradient_noise, std: 0.5, seed: 3}]", "train.max_steps=4",
                           "train.grad_accum_steps=2")
    trainer.train()
    assert trainer.hooks[-1].calls == 4
    state = load_checkpoint(tmp_path / "checkpoints" / "step_00000004.pt")
    assert state["hooks"] == {"hooks.0:GradientNoise": {"calls": 4}}
    resumed = make_trainer(tmp_path, "hooks=[{type: test_gradient_noise, std: 0.5, seed: 3}]", "train.max_steps=6",
                           "train.grad_accum_steps=2", "resume=auto")
    resumed.resume()
    assert resumed.hooks[-1].calls == 4


@pytest.mark.parametrize("how", ["completed", "preempted", "dry_run", "error"])
def test_after_train_runs_however_training_ends(tmp_path, how):
    marker = tmp_path / "exit"
    hooks = {"completed": "", "preempted": ", {type: test_signal_at_step, step: 2}", "dry_run": "",
             "error": ", {type: test_fail_at_step, step: 2}"}[how]
    args = ["train", CONTRACTS, f"work_dir={tmp_path / 'run'}", f"hooks=[{{type: test_record_exit, path: {marker}}}{hooks}]"]
    if how == "dry_run":
        args.append("--dry-run")
    result = run_tool(*args)
    assert result.returncode == (1 if how == "error" else 0), result.stderr[-2000:]
    assert Path(f"{marker}.rank0").read_text() == how


def test_skipped_last_step_still_checkpoints_evaluates_and_says_which_step(tmp_path):
    """NaN on the last (and on an interval) step under nonfinite=skip: the checkpoint and evaluation are still written."""
    result = run_tool("train", CONTRACTS, f"work_dir={tmp_path}", "train.nonfinite=skip",
                      "objective={type: test_nan_linear, nan_calls: [4, 6]}", "data.val={type: test_records, size: 16}",
                      "eval.evaluators=[{type: test_mse}]", "eval.metric=mse", "eval.mode=min", check=True)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "step_00000002.pt", "step_00000004.pt", "step_00000006.pt"]
    assert [r["step"] for r in records(tmp_path, "val")] == [6]
    assert "final evaluation (step 6)" in result.stdout


def test_unsupported_loss_shape_is_an_error(tmp_path):
    from vfm.engine.objective import split_loss

    with pytest.raises(VfmError, match=r"'loss' must be a scalar tensor, got Tensor of shape \(3,\)"):
        split_loss({"loss": torch.ones(3)}, "x")
    with pytest.raises(VfmError, match=r"'loss' must be a scalar or a \(sum, count\) pair, got 3 items"):
        split_loss({"loss": (1, 2, 3)}, "x")


# ------------------------------------------------------------------------------------------- samplers
def test_poisson_sampler_draws_independent_batches_and_resumes(tmp_path):
    trainer = make_trainer(tmp_path, "data.sampler={type: poisson, sample_rate: 0.25}",
                           "train.max_epochs=2", "train.max_steps=null", "checkpoint.interval=0")
    sampler = trainer.train_loader.batch_sampler
    assert trainer.max_steps == 8 and len(sampler) == 4
    sizes = [len(sampler.draw(0, b)) for b in range(200)]
    assert abs(sum(sizes) / len(sizes) - 24) < 1.5 and len(set(sizes)) > 5  # 96 x 0.25, and it varies
    sampler.set_epoch(1, 2)
    assert [len(b) for b in sampler] == [len(sampler.draw(1, 2)), len(sampler.draw(1, 3))]
    with pytest.raises(ConfigError, match=r"data.sampler.sample_rate: got 1.5, expected a probability in \(0, 1\]"):
        make_trainer(tmp_path, "data.sampler={type: poisson, sample_rate: 1.5}")


# ------------------------------------------------------------------------------------ evaluation sets
SETS = ("eval.sets={a: {dataset: {type: test_records, size: 30, seed: 1}, evaluators: [{type: test_mse}], interval: 2},"
        " b: {dataset: {type: test_records, size: 21, seed: 2}, evaluators: [{type: test_prompt_accuracy}], interval: 3,"
        " batch_size: 5}}")


def test_named_sets_run_at_their_intervals_and_eval_py_reads_them(tmp_path):
    work = tmp_path / "run"
    run_tool("train", CONTRACTS, SETS, "eval.metric=a/mse", "eval.mode=min", f"work_dir={work}", check=True)
    logged = [(r["split"], r["step"], sorted(k for k in r if k not in ("split", "step"))) for r in records_all(work)]
    assert logged == [("val/a", 2, ["mse"]), ("val/b", 3, ["accuracy", "count", "median_distance"]), ("val/a", 4, ["mse"]),
                      ("val/a", 6, ["mse"]), ("val/b", 6, ["accuracy", "count", "median_distance"])]
    best = load_checkpoint(work / "checkpoints" / "best.pt")
    a_values = [r["mse"] for r in records_all(work) if r["split"] == "val/a"]
    assert best["best"]["value"] == min(a_values) and best["best"]["metric"] == "a/mse"
    # Two checkpoints, one set: one column each; values equal what training logged at those steps.
    out = run_tool("eval", work / "config.yaml", work / "checkpoints" / "step_00000002.pt",
                   work / "checkpoints" / "step_00000006.pt", "--set", "a", "--out", tmp_path / "m.json", check=True)
    table = json.loads((tmp_path / "m.json").read_text())
    assert table[str(work / "checkpoints" / "step_00000002.pt")] == {"a/mse": pytest.approx(a_values[0], rel=1e-9)}
    assert table[str(work / "checkpoints" / "step_00000006.pt")] == {"a/mse": pytest.approx(a_values[-1], rel=1e-9)}
    assert "step_00000002.pt" in out.stdout.splitlines()[0]
    unknown = run_tool("eval", work / "config.yaml", work / "model.safetensors", "--set", "c")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "error: --set c: no such evaluation set in eval.sets or data.val (available: a, b)"


def records_all(work: Path) -> list[dict]:
    return [r for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["split"].startswith("val")]


def test_eval_metric_must_name_an_existing_set(tmp_path):
    with pytest.raises(ConfigError, match=r"eval.metric: 'c/mse' needs data.val .* or names a set of eval.sets as "
                                          r"<set>/<metric> \(a/<metric>, b/<metric>\)"):
        make_trainer(tmp_path, SETS, "eval.metric=c/mse")


def test_strategy_options_are_checked_against_the_strategy_schema(tmp_path):
    result = run_tool("train", CONTRACTS, f"work_dir={tmp_path}", "dist.ddp={static_grap: true}")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: dist.ddp.static_grap: unknown option of the ddp strategy (did you mean "
                                     "'static_graph'?); accepted: find_unused_parameters, static_graph")
    typed = run_tool("train", CONTRACTS, f"work_dir={tmp_path}", "dist.fsdp={reshard_after_forward: maybe}")
    assert typed.returncode == 2 and "dist.fsdp.reshard_after_forward: expected bool, got str 'maybe'" in typed.stderr
    ema = run_tool("train", CONTRACTS, f"work_dir={tmp_path}", "dist.strategy=deepspeed", "dist.deepspeed={zero_stage: 3}",
                   "ema.enabled=true")
    assert ema.returncode == 2 and "ema.enabled: got True, expected false with dist.strategy=deepspeed" in ema.stderr


def test_streams_run_by_steps_and_need_no_length(tmp_path):
    stream = "data.train={type: test_record_stream, size: 40}"
    trainer = make_trainer(tmp_path, stream, "objective={type: test_linear, record_ids: true}", "train.max_steps=12",
                           "checkpoint.interval=0")
    trainer.train()
    seen = trainer.objective.seen
    assert len(seen) == 48 and sorted(seen[:40]) == list(range(40)) and trainer.data.epoch == 1  # one epoch, then more
    with pytest.raises(ConfigError, match="train.max_epochs: the training stream has no length; set train.max_steps"):
        make_trainer(tmp_path / "b", stream, "train.max_epochs=1", "train.max_steps=null")
