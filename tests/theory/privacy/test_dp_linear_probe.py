"""dp_linear_probe in real Trainer runs: the config trains, the guards stop unsound runs, resume keeps the accounting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vfm.config import load_config
from vfm.engine.run_config import RunConfig
from vfm.engine.trainer import Trainer
from vfm.errors import ConfigError
from vfm.theory.privacy.guards import NonConvexModelError, SamplerMismatchError
from vfm.theory.privacy.objective import DpLinearProbe

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "privacy" / "dp_logreg_digits.yaml"
SHORT = ["train.max_epochs=null", "train.progress_bar=never", "eval.interval=0", "checkpoint.interval=0"]


def trainer(tmp_path: Path, *overrides: str) -> Trainer:
    cfg = load_config(CONFIG, [f"work_dir={tmp_path}", *SHORT, *overrides], RunConfig)
    return Trainer(cfg, tmp_path)


def test_config_trains_with_both_accountings_logged_every_epoch(tmp_path):
    run = trainer(tmp_path, "train.max_steps=20", "objective.epochs=4")
    run.train()
    probe = run.objective
    assert [h["epoch"] for h in probe.history] == [1, 2, 3, 4]
    last = probe.history[-1]
    assert last["epsilon_last_iterate"] == pytest.approx(2.0, abs=1e-4)  # the noise was calibrated for 4 epochs
    assert last["epsilon_last_iterate"] < last["epsilon_composition"]
    assert probe.history[0]["epsilon_last_iterate"] == pytest.approx(probe.history[0]["epsilon_composition"])  # E = 1
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["split"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert train[-1]["epsilon_composition"] == pytest.approx(last["epsilon_composition"], rel=1e-6)
    assert train[-1]["sigma"] == pytest.approx(probe.sigma, rel=1e-6)


def test_noise_is_drawn_once_per_step_from_the_step_seed():
    probe = DpLinearProbe(num_features=3, num_classes=2, schedule="full", lr=0.5, l2=0.1, epochs=1, sigma=0.7,
                          noise_seed=4)
    probe.check_dataset(type("D", (), {"features": torch.zeros(2, 3), "feature_norm": 1.0,
                                       "labels": torch.tensor([0, 1]), "__len__": lambda self: 2})(), "data.train")
    batch = {"features": torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), "label": torch.tensor([0, 1]),
             "index": torch.tensor([0, 1])}
    probe.forward_backward(batch, 1.0)
    generator = torch.Generator().manual_seed(4 * 1_000_003 + 0)
    noise_w = torch.randn((1, 3), generator=generator, dtype=torch.float64).float()
    noise_b = torch.randn((1,), generator=generator, dtype=torch.float64).float()
    # At w = 0 the residuals sigmoid(0) - y are +1/2 and -1/2: the data term is their mean times the features.
    data_w = torch.tensor([[0.25, -0.25, 0.0]])
    torch.testing.assert_close(probe.head.weight.grad, data_w + 0.7 * noise_w)
    torch.testing.assert_close(probe.head.bias.grad, torch.zeros(1) + 0.7 * noise_b)
    assert probe.accountant.steps == 1 and probe.accountant.mu0 == pytest.approx(2 * 2**0.5 / (2 * 0.7))


@pytest.mark.parametrize(("overrides", "error", "match"), [
    (["data.sampler={type: resumable}"], SamplerMismatchError, "step 6 is not batch 0 of the first epoch"),
    (["objective.schedule=poisson", "+objective.sample_rate=0.2"], SamplerMismatchError, "not the Poisson draw"),
    (["optim.momentum=0.9"], ConfigError, "before step 3 the head's weight is not w - lr g"),
    (["objective.schedule=full"], SamplerMismatchError, "has 286 of 1438 records"),
])
def test_unsound_runs_stop_with_one_clear_error(tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        trainer(tmp_path, "train.max_steps=8", "objective.epochs=2", *overrides).train()


def test_unsound_settings_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"eta: got 2.5 > 2/M"):
        trainer(tmp_path, "train.max_steps=2", "objective.lr=2.5", "optim.lr=2.5")
    with pytest.raises(ConfigError, match="exactly one of target_epsilon"):
        trainer(tmp_path, "train.max_steps=2", "+objective.sigma=0.1")
    with pytest.raises(ConfigError, match="clipped softmax gradient"):
        trainer(tmp_path, "train.max_steps=2", "+objective.clip=0.5")
    with pytest.raises(NonConvexModelError):
        probe = DpLinearProbe(num_features=3, num_classes=2, schedule="full", lr=0.5, l2=0.1, epochs=1, sigma=0.7)
        probe.extra = torch.nn.Linear(3, 3)  # a second trainable layer: no longer one convex head
        from vfm.theory.privacy.guards import check_convex_head

        check_convex_head(probe)


@pytest.mark.slow  # three short Trainer runs: ~10 s alone
def test_epsilon_and_weights_after_resume_equal_an_uninterrupted_run(tmp_path):
    common = ["objective.epochs=6", "checkpoint.interval=10"]
    straight = trainer(tmp_path / "straight", "train.max_steps=30", *common)
    straight.train()
    trainer(tmp_path / "resumed", "train.max_steps=10", *common).train()
    resumed = trainer(tmp_path / "resumed", "train.max_steps=30", "resume=auto", *common)
    resumed.train()
    assert resumed.objective.accountant.steps == 30
    assert resumed.objective.history == straight.objective.history
    for key, value in straight.objective.state_dict().items():
        assert torch.equal(resumed.objective.state_dict()[key], value), key


@pytest.mark.parametrize("overrides", [
    ["objective.schedule=full", "data.batch_size=1438"],
    ["objective.schedule=poisson", "+objective.sample_rate=0.2", "data.sampler={type: poisson, sample_rate: 0.2}"],
])
def test_full_and_poisson_schedules_train_and_account(tmp_path, overrides):
    run = trainer(tmp_path, "train.max_steps=10", "objective.epochs=2", *overrides)
    run.train()
    probe = run.objective
    assert probe.accountant.steps == 10 and len(probe.history) == 10 // probe.batches_per_epoch
    last = probe.history[-1]
    if probe.schedule == "poisson":  # labelled approximate, no GDP value claimed, never above the certified value
        assert probe.accountant.approximate and "mu_last_iterate" not in last and "epsilon_last_iterate" not in last
        assert last["epsilon_last_iterate_approx"] <= last["epsilon_composition"]
        assert probe.normaliser == pytest.approx(0.2 * 1438)
    else:
        assert last["epsilon_last_iterate"] < last["epsilon_composition"]
        assert last["mu_last_iterate"] == pytest.approx(probe.accountant.mu(10))
