"""The sharpness_monitor hook inside a real Trainer run (config loads it through custom_imports)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from vfm.config import load_config
from vfm.engine.run_config import RunConfig
from vfm.engine.trainer import Trainer
from vfm.registry import BACKBONES
from vfm.theory.stability.monitor import SharpnessMonitor
from vfm.theory.stability.problems import ObjectiveProbe
from vfm.theory.stability.sharpness import measure_sharpness

pytestmark = pytest.mark.slow  # a real Trainer run: ~5 s alone, more on a loaded machine

CONFIG = Path(__file__).with_name("sharpness_tiny.yaml")


@BACKBONES.register("stability_test_mlp", force=True)
class TinyMLP(nn.Module):
    """8x8 images -> 16 tanh units -> logits: small enough that a Hessian measurement takes milliseconds."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size**2, 16), nn.Tanh(), nn.Linear(16, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def test_monitor_measures_every_k_steps_and_matches_a_direct_measurement(tmp_path):
    cfg = load_config(CONFIG, [f"work_dir={tmp_path}"], RunConfig)
    trainer = Trainer(cfg, tmp_path)
    trainer.train()
    monitor = next(h for h in trainer.hooks if isinstance(h, SharpnessMonitor))
    assert [record["step"] for record in monitor.history] == [4, 8]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if r["split"] == "sharpness"]
    assert [r["step"] for r in logged] == [4, 8] and logged[-1]["sharpness_mu"] == monitor.last["sharpness_mu"]
    last = monitor.last
    # |lambda| <= ||H||_F for any symmetric matrix, so Lanczos and Hutchinson must agree up to the latter's error.
    assert abs(last["sharpness_top_eigenvalue"]) <= last["sharpness_hessian_frobenius"] + 3 * last["sharpness_hessian_frobenius_stderr"]
    lr = trainer.optimizer.param_groups[0]["lr"]
    bound = math.sqrt(16 / last["sharpness_mu"]) / lr
    assert last["sharpness_frobenius_bound"] == pytest.approx(bound, rel=1e-9)
    assert last["sharpness_frobenius_ratio"] == pytest.approx(last["sharpness_hessian_frobenius"] / bound, rel=1e-9)
    assert last["sharpness_gd_ratio"] == pytest.approx(last["sharpness_top_eigenvalue"] * lr / 2, rel=1e-9)
    # The hook measured the final weights on its probe batch: a direct call with the same seed gives the same numbers.
    trainer.objective.eval()
    direct = measure_sharpness(ObjectiveProbe(trainer.objective, monitor.batch), lr, 16, probes=8, lanczos_iters=8,
                               alignment_samples=8, seed=cfg.hooks[0].get("seed", 0) + trainer.step)
    assert direct["hessian_frobenius"] == pytest.approx(last["sharpness_hessian_frobenius"], rel=1e-6)
    assert direct["mu"] == pytest.approx(last["sharpness_mu"], rel=1e-6)
    assert direct["loss"] == pytest.approx(last["sharpness_loss"], rel=1e-6)
