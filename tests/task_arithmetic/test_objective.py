"""The task_arithmetic objective in the Trainer: only the selection trains, theta0 stays out of step checkpoints,
the linearised modes refuse sharded strategies, and objective.task reaches every data node."""

from __future__ import annotations

import logging

import pytest
import torch
from ta_helpers import finetune_config, pretrained_file  # noqa: F401 - fixtures

from vfm.config import load_config
from vfm.engine.objective import check_requirements, requirements_of
from vfm.engine.run_config import RunConfig
from vfm.engine.strategies import strategy_caps
from vfm.engine.trainer import Trainer
from vfm.errors import CheckpointError, ConfigError, DataError
from vfm.registry import OBJECTIVES
from vfm.weights import save_safetensors


def _trainer(config, *overrides: str) -> Trainer:
    cfg = load_config(config, list(overrides), RunConfig)
    return Trainer(cfg, cfg.work_dir)


def test_attn_only_step_changes_only_the_selected_tensors(finetune_config, caplog):  # noqa: F811
    with caplog.at_level(logging.INFO, logger="vfm.task_arithmetic"):
        trainer = _trainer(finetune_config, "objective.finetune.mode=attn_only", "train.max_steps=1")
    assert "rule attn_linear: 2 tensors, 4,096 of" in caplog.text  # 4 * 1 block * 32^2, logged with the total
    before = {k: v.clone() for k, v in trainer.objective.state_dict().items()}
    trainer.train()
    after = trainer.objective.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"encoder.blocks.0.attn.qkv.weight", "encoder.blocks.0.attn.proj.weight"}
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert sum(p.numel() for p in optimized) == 4 * 32**2
    assert len(trainer.optimizer.state) == 2  # AdamW moments for the two selected tensors only


def test_linearized_run_keeps_theta0_out_of_step_checkpoints_and_resumes(finetune_config, pretrained_file):  # noqa: F811
    trainer = _trainer(finetune_config, "objective.finetune.mode=linearized", "objective.finetune.rule=attn_linear")
    point_keys = trainer.objective.frozen_state_keys()
    assert point_keys == ["linearization_point.blocks__0__attn__qkv__weight", "linearization_point.blocks__0__attn__proj__weight"]
    theta0 = {k: trainer.objective.state_dict()[k].clone() for k in point_keys}
    trainer.train()
    assert all(torch.equal(trainer.objective.state_dict()[k], v) for k, v in theta0.items())
    step = torch.load(trainer.work_dir / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert not set(point_keys) & set(step["model"]) and "encoder.blocks.0.attn.qkv.weight" in step["model"]
    assert step["frozen"]["keys"] == point_keys
    resumed = _trainer(finetune_config, "objective.finetune.mode=linearized", "objective.finetune.rule=attn_linear",
                       "train.max_steps=3", "resume=auto")
    resumed.train()
    assert resumed.step == 3
    from safetensors.torch import load_file

    exported = load_file(str(trainer.work_dir / "model.safetensors"))
    assert set(point_keys) <= set(exported)  # the final export keeps everything
    # theta0 rebuilt from another source than the run started with: the resume refuses it.
    other = {k: v + 1.0 for k, v in load_file(str(pretrained_file)).items()}
    save_safetensors(other, pretrained_file.parent / "other.safetensors")
    moved = _trainer(finetune_config, "objective.finetune.mode=linearized", "objective.finetune.rule=attn_linear",
                     f"objective.pretrained={pretrained_file.parent / 'other.safetensors'}", "train.max_steps=4",
                     "resume=auto")
    with pytest.raises(CheckpointError, match="frozen weights"):
        moved.resume()


def test_linearized_modes_run_under_single_and_ddp_only(finetune_config):  # noqa: F811
    cfg = load_config(finetune_config, ["objective.finetune.mode=linearized"], RunConfig)
    objective = OBJECTIVES.build(cfg.objective, "objective")
    requirements = requirements_of(objective)
    for strategy in ("single", "ddp"):
        check_requirements(requirements, "task_arithmetic", strategy, "fp32", 1, 1.0, strategy_caps(strategy, {}))
    with pytest.raises(ConfigError, match=r"dist.strategy: 'fsdp' is not supported by objective.type=task_arithmetic"):
        check_requirements(requirements, "task_arithmetic", "fsdp", "fp32", 1, 1.0, strategy_caps("fsdp", {}))


def test_posthoc_linearized_is_evaluation_only(finetune_config):  # noqa: F811
    with pytest.raises(ConfigError, match="posthoc_linearized is evaluation only"):
        _trainer(finetune_config, "objective.finetune.mode=posthoc_linearized")


def test_bad_finetune_nodes_and_datasets_are_refused(finetune_config):  # noqa: F811
    with pytest.raises(ConfigError, match=r"objective.finetune.mode: got 'lora', expected one of standard"):
        _trainer(finetune_config, "objective.finetune.mode=lora")
    with pytest.raises(ConfigError, match=r"rule: got 'mlp' with mode attn_only"):
        _trainer(finetune_config, "objective.finetune.mode=attn_only", "objective.finetune.rule=mlp")
    with pytest.raises(DataError, match=r"data.train: 10 classes, but the objective's head for task 'parity' has 2"):
        _trainer(finetune_config, "objective.task=parity", "data.train.task=identity")


def test_the_task_override_reaches_every_data_node(finetune_config):  # noqa: F811
    cfg = load_config(finetune_config, ["objective.task=geq5"], RunConfig)
    assert cfg.data.train.task == cfg.data.val.task == cfg.eval.sets.test.dataset.task == "geq5"
    assert cfg.objective.probe_data.task == "geq5" and cfg.work_dir.endswith("run")
    objective = OBJECTIVES.build(cfg.objective, "objective")
    assert objective.head.num_classes == 2 and not any(True for _ in objective.head.parameters())


def test_tools_eval_evaluates_several_checkpoints_post_hoc_linearised(finetune_config, pretrained_file):  # noqa: F811
    from safetensors.torch import load_file

    from vfm.engine.evaluate import evaluate_checkpoints, load_objective
    from vfm.task_arithmetic.objective import encoder_weights

    trainer = _trainer(finetune_config, "train.max_steps=2")
    trainer.train()
    weights = str(trainer.work_dir / "model.safetensors")
    cfg = load_config(finetune_config, ["objective.finetune.mode=posthoc_linearized"], RunConfig)
    model = load_objective(cfg, weights)
    finetuned, pretrained = load_file(weights), encoder_weights(load_file(str(pretrained_file)))
    point = model.linearization_point.tensors()
    assert all(torch.equal(point[k].cpu(), pretrained[k]) for k in point)  # theta0 from objective.pretrained
    assert torch.equal(model.encoder.state_dict()["blocks.0.attn.qkv.weight"].cpu(), finetuned["encoder.blocks.0.attn.qkv.weight"])
    results = evaluate_checkpoints(cfg, [weights, weights])
    assert set(results[weights]) == {"accuracy", "test/accuracy"} and 0.0 <= results[weights]["accuracy"] <= 1.0
