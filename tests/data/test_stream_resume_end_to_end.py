"""kill -9 mid-stream, then resume=auto: the run continues with exactly the remaining samples (2 loader workers)."""

from __future__ import annotations

import json

import pytest
from shard_fixtures import make_pairs

from conftest import REPO, run_tool

CONFIG = REPO / "tests" / "configs" / "shard_stream.yaml"


def batches(log_dir):
    """Per process (in start order), the batches of keys it trained on."""
    files = sorted(log_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns)
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in files]


@pytest.mark.slow
def test_kill_and_resume_continue_with_exactly_the_remaining_samples(tmp_path):
    make_pairs(tmp_path / "data", 40, 10)  # 4 shards: 10 batches of 4 per epoch, so 16 steps cross an epoch
    urls = f"data.train.urls={tmp_path / 'data' / 'shards' / 'pairs-*.tar'}"
    run_tool("train", CONFIG, urls, f"objective.log_dir={tmp_path / 'straight_log'}", f"work_dir={tmp_path / 'straight'}",
             check=True)
    (straight,) = batches(tmp_path / "straight_log")
    assert len(straight) == 16
    epoch0 = [k for batch in straight[:10] for k in batch]
    assert sorted(epoch0) == [f"s{i:05d}" for i in range(40)]  # one epoch: every sample once

    killed = [urls, f"objective.log_dir={tmp_path / 'killed_log'}", f"work_dir={tmp_path / 'killed'}"]
    died = run_tool("train", CONFIG, *killed, "hooks=[{type: test_kill_at_step, step: 6}]")
    assert died.returncode == -9, died.stderr[-2000:]
    run_tool("train", CONFIG, *killed, "resume=auto", check=True)
    before, after = batches(tmp_path / "killed_log")
    assert len(before) == 6 and len(after) == 12  # steps 1-6 ran, then steps 5-16 from the step-4 checkpoint
    assert before[:4] + after == straight
