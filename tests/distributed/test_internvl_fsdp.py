"""InternVL stage 2 under FSDP2 (2 CPU ranks, gloo): it trains with frozen towers, and its evaluation through the
sharded inference methods (`encode_image_g`, `encode_image_c`, `generate`) equals tools/eval.py in one process on
the weights it saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_collectives import free_port

from conftest import REPO, run_tool

pytestmark = pytest.mark.slow
STAGE2 = REPO / "configs" / "internvl" / "stage2_tiny_shapes.yaml"


def test_stage2_trains_and_evaluates_under_fsdp(tmp_path):
    data = tmp_path / "shapes_captions"
    run_tool("make_shapes_captions", data, "--train", 64, "--val", 16, "--docs", 2, "--maxcount", 16,
             "--image-size", 32, check=True)
    work = tmp_path / "fsdp"
    args = [f"data.root={data}", "data.batch_size=8", "data.num_workers=0", "train.max_steps=2", "eval.interval=0",
            "eval.sets.linear_probe.evaluators.0.max_train_samples=16", "checkpoint.interval=0", "train.tensorboard=false",
            "train.progress_bar=never", "data.train.shuffle_buffer=8", "eval.sets.captions.evaluators.0.max_new_tokens=3",
            "dist.strategy=fsdp", "ema.enabled=false", f"work_dir={work}"]
    env = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "plugins"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(REPO / "tools" / "dist_train.sh"), str(STAGE2), "2", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    final = {r["split"]: r for r in rows if r["split"] != "train"}
    out = tmp_path / "metrics.json"
    run_tool("eval", work / "config.yaml", work / "model.safetensors", "--set", "retrieval", "--set", "retrieval_c",
             "--set", "captions", "--out", out, check=True)
    single = json.loads(out.read_text())
    for name, key in [("retrieval", "mean_recall"), ("retrieval", "i2t_r1"), ("retrieval_c", "mean_recall"),
                      ("captions", "word_match"), ("captions", "distinct")]:
        assert single[f"{name}/{key}"] == pytest.approx(final[f"val/{name}"][key], abs=1e-6), (name, key)
