"""Unit tests for vfm/engine/schedulers.py: warmup, cosine, step and constant schedules, resume."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from vfm.errors import ConfigError
from vfm.registry import SCHEDULERS

BASE_LR = 0.4


def make_optimizer() -> torch.optim.Optimizer:
    model = nn.Linear(2, 2)
    # two groups with different base lrs: the schedule is a factor on each group's own lr
    return torch.optim.SGD(
        [{"params": [model.weight], "lr": BASE_LR}, {"params": [model.bias], "lr": BASE_LR / 4}], lr=BASE_LR
    )


def lr_factors(node: dict, steps: int) -> list[float]:
    """The lr factor (lr / base lr of group 0) before each of `steps` optimizer steps."""
    optimizer = make_optimizer()
    scheduler = SCHEDULERS.build(node, "scheduler", optimizer=optimizer)
    factors = []
    for _ in range(steps):
        factors.append(optimizer.param_groups[0]["lr"] / BASE_LR)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(factors[-1] * BASE_LR / 4)
        optimizer.step()
        scheduler.step()
    return factors


def test_linear_warmup_from_start_factor():
    factors = lr_factors({"type": "constant", "total_steps": 20, "warmup_steps": 4, "warmup_start_factor": 0.2}, 8)
    assert factors == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0])


def test_constant_without_warmup():
    assert lr_factors({"type": "constant", "total_steps": 5}, 5) == [1.0] * 5


def test_cosine_values():
    warmup, total, min_ratio = 10, 110, 0.1
    factors = lr_factors(
        {
            "type": "cosine",
            "total_steps": total,
            "warmup_steps": warmup,
            "warmup_start_factor": 0.0,
            "min_lr_ratio": min_ratio,
        },
        total + 5,
    )
    assert factors[0] == 0.0
    assert factors[5] == pytest.approx(0.5)  # halfway through the warmup
    assert factors[warmup] == pytest.approx(1.0)  # the peak right after warmup
    midpoint = warmup + (total - warmup) // 2
    assert factors[midpoint] == pytest.approx(min_ratio + (1 - min_ratio) * 0.5)  # 0.55
    quarter = warmup + (total - warmup) // 4
    assert factors[quarter] == pytest.approx(min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert factors[total] == pytest.approx(min_ratio)
    assert factors[total + 4] == pytest.approx(min_ratio)  # stays at the floor after total_steps
    after_warmup = factors[warmup : total + 1]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:], strict=False))  # monotone decay


def test_cosine_defaults_decay_to_zero():
    factors = lr_factors({"type": "cosine", "total_steps": 8}, 9)
    assert factors[0] == 1.0
    assert factors[4] == pytest.approx(0.5)
    assert factors[8] == pytest.approx(0.0, abs=1e-12)


def test_step_milestones():
    factors = lr_factors({"type": "step", "total_steps": 10, "milestones": [6, 3], "gamma": 0.5}, 9)
    assert factors == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25])


def test_step_with_warmup():
    node = {
        "type": "step",
        "total_steps": 10,
        "milestones": [4],
        "gamma": 0.1,
        "warmup_steps": 2,
        "warmup_start_factor": 0.5,
    }
    assert lr_factors(node, 6) == pytest.approx([0.5, 0.75, 1.0, 1.0, 0.1, 0.1])


@pytest.mark.parametrize("kind", ["cosine", "step", "constant"])
def test_state_dict_round_trip_mid_schedule(kind):
    node = {"type": kind, "total_steps": 30, "warmup_steps": 5, "warmup_start_factor": 0.1}
    if kind == "step":
        node["milestones"] = [12, 20]
    optimizer = make_optimizer()
    scheduler = SCHEDULERS.build(node, "scheduler", optimizer=optimizer)
    for _ in range(9):
        optimizer.step()
        scheduler.step()
    saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()

    # A fresh run built from a *different* config: what it resumes must come from the state dict.
    other = dict(node, total_steps=1000, warmup_steps=100)
    resumed_optimizer = make_optimizer()
    resumed = SCHEDULERS.build(other, "scheduler", optimizer=resumed_optimizer)
    resumed_optimizer.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved_scheduler)

    expected, got = [], []
    for _ in range(25):
        optimizer.step()
        scheduler.step()
        resumed_optimizer.step()
        resumed.step()
        expected.append([g["lr"] for g in optimizer.param_groups])
        got.append([g["lr"] for g in resumed_optimizer.param_groups])
    assert got == expected  # bit-identical, not approximately equal
    assert len({tuple(lrs) for lrs in expected}) > 1 or kind == "constant"


@pytest.mark.parametrize("kind", ["cosine", "constant"])
def test_negative_warmup_is_a_config_error(kind):
    with pytest.raises(ConfigError, match=r"^scheduler.warmup_steps: got -1, expected >= 0$"):
        SCHEDULERS.build({"type": kind, "total_steps": 10, "warmup_steps": -1}, "scheduler", optimizer=make_optimizer())


def test_warmup_longer_than_the_run_warns_and_keeps_ramping(caplog):
    # a short trial of a long recipe: the warmup is cut off rather than refused
    with caplog.at_level(logging.WARNING, logger="vfm.engine.schedulers"):
        factors = lr_factors({"type": "cosine", "total_steps": 4, "warmup_steps": 8, "warmup_start_factor": 0.0}, 4)
    assert factors == pytest.approx([0.0, 0.125, 0.25, 0.375])
    assert "scheduler.warmup_steps=8 exceeds the run's 4 steps" in caplog.text


def test_scheduler_node_is_validated():
    with pytest.raises(ConfigError, match=r"^scheduler: set exactly one of milestones"):
        SCHEDULERS.build({"type": "step", "total_steps": 10}, "scheduler", optimizer=make_optimizer())
    with pytest.raises(ConfigError, match=r"^scheduler.type: unknown schedulers type 'cosin' \(did you mean 'cosine'"):
        SCHEDULERS.build({"type": "cosin", "total_steps": 10}, "scheduler", optimizer=make_optimizer())


def test_step_milestone_fractions_drop_at_that_fraction_of_the_run():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = SCHEDULERS.build({"type": "step", "milestone_fractions": [0.8]}, "scheduler", optimizer=optimizer,
                                 total_steps=50)
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[39] == 1.0 and lrs[40] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="exactly one of milestones"):
        SCHEDULERS.build({"type": "step", "milestones": [3], "milestone_fractions": [0.5]}, "scheduler",
                         optimizer=optimizer, total_steps=10)
    with pytest.raises(ConfigError, match=r"milestone_fractions: got \[40\]"):
        SCHEDULERS.build({"type": "step", "milestone_fractions": [40]}, "scheduler", optimizer=optimizer, total_steps=50)
