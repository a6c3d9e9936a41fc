"""The tiny CLIP config trains and evaluates its three named sets under torchrun with 2 CPU ranks (DDP, gloo),
with cached-feature accumulation (the objective owns its backward), and every rank reports the same metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_ddp_training import free_port

from conftest import REPO, run_tool

pytestmark = pytest.mark.slow


def test_clip_under_ddp_with_accumulation(tmp_path):
    data = tmp_path / "captions"
    run_tool("make_shapes_captions", data, "--train", 128, "--val", 32, "--docs", 2, "--maxcount", 32,
             "--image-size", 32, check=True)
    env = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [f"data.root={data}", "dist.strategy=ddp", "objective.accum_freq=2", "data.batch_size=8",
            "data.num_workers=1", "train.max_steps=2", "eval.interval=0", "checkpoint.interval=0",
            "eval.sets.linear_probe.evaluators.0.max_train_samples=32", f"work_dir={tmp_path / 'run'}",
            "train.tensorboard=false", "train.progress_bar=never"]
    result = subprocess.run(["bash", str(REPO / "tools" / "dist_train.sh"),
                             str(REPO / "configs" / "clip" / "clip_vit_tiny_shapes.yaml"), "2", *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    splits = {row["split"] for row in rows}
    assert {"train", "val/zeroshot", "val/retrieval", "val/linear_probe"} <= splits
    assert (tmp_path / "run" / "model.safetensors").is_file()
