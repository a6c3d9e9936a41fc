"""The Trainer in-process: precisions, accumulation, epochs, lr multipliers, hooks."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from vfm.config import load_config
from vfm.engine.checkpoint import load_checkpoint
from vfm.engine.run_config import RunConfig
from vfm.engine.trainer import Trainer

# A BatchNorm-free model, so that micro-batching cannot change the numbers.
VIT = ["objective.backbone={type: timm, name: vit_tiny_patch16_224, img_size: 16, patch_size: 8, depth: 1, in_chans: 1}"]


def make_trainer(tmp_path, *overrides: str) -> Trainer:
    cfg = load_config(TINY, [f"work_dir={tmp_path}", "train.progress_bar=never", *overrides], RunConfig)
    return Trainer(cfg, cfg.work_dir)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_checkpoints_scaler(tmp_path, precision):
    # The ViT, because bf16 BatchNorm over 1x1 maps at batch 16 (ResNet at 16 px) overflows by itself.
    trainer = make_trainer(tmp_path, *VIT, f"train.precision={precision}", "train.max_steps=3", "eval.interval=0", "ema.enabled=false")
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result["train"]["loss"]))
    state = load_checkpoint(tmp_path / "checkpoints" / "step_00000003.pt")
    assert (state["scaler"] is not None) == (precision == "fp16")
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    common = [*VIT, "train.max_steps=1", "ema.enabled=false", "data.train.transforms=[]", "train.clip_grad_norm=null",
              "checkpoint.export_safetensors=false", "eval.interval=0", "data.val=null", "eval.metric=null", "eval.evaluators=[]"]
    accumulated = make_trainer(tmp_path / "a", *common, "data.batch_size=8", "train.grad_accum_steps=2")
    large = make_trainer(tmp_path / "b", *common, "data.batch_size=16", "train.grad_accum_steps=1")
    accumulated.train()
    large.train()
    for (name, a), (_, b) in zip(accumulated.model.state_dict().items(), large.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_max_epochs_converts_to_steps(tmp_path):
    trainer = make_trainer(tmp_path, "train.max_steps=null", "train.max_epochs=1")
    # 1,437 training digits at batch 16 with drop_last -> 89 batches -> 44 steps of 2 micro-batches.
    assert len(trainer.train_loader) == 89 and trainer.max_steps == 44


def test_lr_multiplier_and_schedule_reach_the_optimizer(tmp_path):
    trainer = make_trainer(tmp_path, "+optim.lr_mult={'backbone.fc.*': 10.0}", "scheduler.warmup_steps=0")
    groups = {g["lr_scale"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {1.0, 10.0}
    assert all(name.startswith("backbone.fc.") for name in groups[10.0]["param_names"])
    assert groups[10.0]["lr"] == pytest.approx(10 * groups[1.0]["lr"])


def test_freeze_hook_keeps_weights_exact(tmp_path):
    trainer = make_trainer(tmp_path, "hooks=[{type: freeze_parameters, patterns: ['backbone.conv1.*']}]",
                           "train.max_steps=2", "eval.interval=0")
    before = trainer.model.backbone.conv1.weight.detach().clone()
    other = trainer.model.backbone.fc.weight.detach().clone()
    trainer.train()
    assert torch.equal(trainer.model.backbone.conv1.weight, before)
    assert not torch.equal(trainer.model.backbone.fc.weight, other)
