"""Unit tests for vfm/engine/step_logs.py: losses and logged scalars merged by name, not by position."""

from __future__ import annotations

import pytest
import torch

from vfm.engine.step_logs import StepLogs


def test_scalars_are_averaged_over_the_micro_batches_that_logged_them():
    logs = StepLogs()
    logs.add({"loss": torch.tensor(1.0), "a": torch.tensor(2.0)}, torch.tensor(1.0), None)
    logs.add({"loss": torch.tensor(3.0), "b": 10.0}, torch.tensor(3.0), None)
    logs.add({"loss": torch.tensor(5.0), "a": torch.tensor(4.0), "per_sample": torch.ones(3)}, torch.tensor(5.0), None)
    result, count = logs.reduce()
    assert result == {"loss": 3.0, "a": 3.0, "b": 10.0}  # 'b' once, 'a' twice; tensors that are not scalars dropped
    assert count == 3.0


def test_sum_count_losses_divide_by_the_total_count():
    logs = StepLogs()
    logs.add({}, torch.tensor(6.0), torch.tensor(2))
    logs.add({}, torch.tensor(4.0), torch.tensor(8))
    result, count = logs.reduce()
    assert result["loss"] == pytest.approx(1.0) and count == 10.0  # (6 + 4) / (2 + 8), not mean(3, 0.5)


def test_mixing_plain_and_sum_count_losses_in_one_step_is_refused():
    logs = StepLogs()
    logs.add({}, torch.tensor(1.0), None)
    with pytest.raises(ValueError, match="mix plain and"):
        logs.add({}, torch.tensor(1.0), torch.tensor(3))
