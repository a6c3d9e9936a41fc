"""The EMA numerics the Trainer relies on (timm's ModelEmaV3, see vfm/engine/trainer.py `_build_ema`).

The Trainer calls `ema.update(model, step=step)` after incrementing `step`, so the first update
passes step=1.
"""

from __future__ import annotations

import copy

import pytest
import torch
from timm.utils import ModelEmaV3
from torch import nn


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def perturb(model: nn.Module, seed: int) -> None:
    """Move every parameter and running statistic, as a training step would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator))
    model[1].num_batches_tracked += 1


def test_update_is_exponential_moving_average_of_every_float_tensor():
    model = make_model()
    decay = 0.9
    ema = ModelEmaV3(model, decay=decay)
    perturb(model, seed=1)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    current = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model, step=10)
    after = ema.module.state_dict()
    for name, value in after.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, decay * before[name] + (1 - decay) * current[name], rtol=0, atol=1e-6)
            assert not torch.equal(value, current[name]), name  # really a blend, not a copy
        else:  # integer buffers (BatchNorm's counter) are copied
            assert torch.equal(value, current[name])
    assert set(after) == set(model.state_dict())


def test_repeated_updates_compound():
    model = make_model()
    ema = ModelEmaV3(model, decay=0.5)
    start = model[0].weight.detach().clone()
    targets = []
    for step in range(2, 5):  # steps >= 2 use the configured decay
        perturb(model, seed=step)
        targets.append(model[0].weight.detach().clone())
        ema.update(model, step=step)
    expected = start
    for target in targets:
        expected = 0.5 * expected + 0.5 * target
    torch.testing.assert_close(ema.module[0].weight, expected)


def test_first_trainer_update_copies_the_model():
    # timm's get_decay returns 0 for step <= 1 (update_after_step=0): the EMA starts from the
    # weights after the first optimizer step rather than from the initialisation.
    model = make_model()
    ema = ModelEmaV3(model, decay=0.999)
    perturb(model, seed=3)
    assert ema.get_decay(1) == 0.0
    assert ema.get_decay(2) == 0.999
    ema.update(model, step=1)
    for name, value in ema.module.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_warmup_ramps_the_decay_up_to_its_cap():
    ema = ModelEmaV3(make_model(), decay=0.99, use_warmup=True)
    # decay(step) = 1 - (1 + (step - 1)) ** -2/3, capped at `decay`
    assert ema.get_decay(1) == 0.0
    assert ema.get_decay(2) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema.get_decay(9) == pytest.approx(1 - 9 ** (-2 / 3))
    assert ema.get_decay(10**6) == 0.99
    decays = [ema.get_decay(step) for step in range(1, 200)]
    assert all(a <= b for a, b in zip(decays, decays[1:], strict=False))

    model = make_model()
    ema = ModelEmaV3(model, decay=0.99, use_warmup=True)
    before = ema.module[2].weight.detach().clone()
    perturb(model, seed=4)
    ema.update(model, step=9)
    d = 1 - 9 ** (-2 / 3)
    torch.testing.assert_close(ema.module[2].weight, d * before + (1 - d) * model[2].weight.detach())


def test_ema_copy_is_independent_of_the_model():
    model = make_model()
    ema = ModelEmaV3(model, decay=0.9)
    assert not ema.module.training  # evaluation mode: BatchNorm uses running statistics
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(ema.module.parameters(), model.parameters(), strict=True))
    snapshot = copy.deepcopy(ema.module.state_dict())
    perturb(model, seed=5)  # without update, training the model leaves the EMA alone
    for name, value in ema.module.state_dict().items():
        assert torch.equal(value, snapshot[name])


def test_state_round_trip_through_module_state_dict(tmp_path):
    model = make_model()
    ema = ModelEmaV3(model, decay=0.8)
    for step in range(1, 4):
        perturb(model, seed=step)
        ema.update(model, step=step)
    path = tmp_path / "ema.pt"
    torch.save(ema.module.state_dict(), path)

    resumed_model = copy.deepcopy(model)
    resumed = ModelEmaV3(make_model(), decay=0.8)  # fresh weights, as when a Trainer is rebuilt
    resumed.module.load_state_dict(torch.load(path, weights_only=True))
    for name, value in resumed.module.state_dict().items():
        assert torch.equal(value, ema.module.state_dict()[name]), name

    for step in range(4, 7):  # the same subsequent updates give bit-identical EMA weights
        perturb(model, seed=step)
        perturb(resumed_model, seed=step)
        ema.update(model, step=step)
        resumed.update(resumed_model, step=step)
    for name, value in resumed.module.state_dict().items():
        assert torch.equal(value, ema.module.state_dict()[name]), name
