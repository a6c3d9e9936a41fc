"""Unit tests for vfm/engine/metrics_logger.py: metrics.jsonl after a resume."""

from __future__ import annotations

import errno
import json

import pytest

from vfm.engine.metrics_logger import MetricsLogger, drop_records_after
from vfm.errors import VfmError


def test_drop_records_after_keeps_earlier_steps_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "split": split}) for s, split in ((2, "train"), (4, "train"), (4, "val"), (6, "train"))]
    path.write_text("\n".join(lines) + '\n{"step": 8, "spl')  # killed in the middle of a write
    assert drop_records_after(path, 4) == 2
    assert path.read_text().splitlines() == lines[:3]
    assert drop_records_after(path, 4) == 0 and drop_records_after(tmp_path / "none.jsonl", 0) == 0


def test_logger_resumed_at_a_step_appends_after_it(tmp_path):
    first = MetricsLogger(tmp_path, True, False, "never", 10, 0)
    for step in (1, 2, 3):
        first.log(step, {"loss": float(step)})
    first.close()
    resumed = MetricsLogger(tmp_path, True, False, "never", 10, 2)  # resumed from the step-2 checkpoint
    resumed.log(3, {"loss": 30.0})
    resumed.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_a_full_disk_is_one_error_naming_the_file(tmp_path, monkeypatch):
    metrics = MetricsLogger(tmp_path, True, False, "never", 10, 0)

    def disk_full(text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics.jsonl, "write", disk_full)
    with pytest.raises(VfmError, match=r"metrics\.jsonl: cannot write metrics: No space left on device"):
        metrics.log(1, {"loss": 1.0})
    monkeypatch.undo()
    metrics.close()
