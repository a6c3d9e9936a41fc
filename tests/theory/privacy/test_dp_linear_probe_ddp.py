"""dp_linear_probe under torchrun with 2 CPU ranks (DDP on gloo) against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "privacy" / "dp_logreg_digits.yaml"
COMMON = ["train.max_epochs=null", "train.max_steps=15", "objective.epochs=3", "eval.interval=0",
          "checkpoint.interval=0", "train.progress_bar=never", "custom_imports=[privacy_replicas]",
          "hooks=[{type: privacy_test_replica_digest}]"]


def run(work: Path, ranks: int, *overrides: str) -> subprocess.CompletedProcess:
    """tools/dist_train.sh (torchrun with `ranks` processes) on the digits config."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": str(port), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO)])}
    args = [*COMMON, f"work_dir={work}", *overrides]
    command = ["bash", str(REPO / "tools" / "dist_train.sh"), str(CONFIG), str(ranks), *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow  # one torchrun launch of 2 ranks (start-up dominates) and one in-process run: ~20 s
def test_two_ranks_draw_the_same_noise_and_match_one_process(tmp_path):
    from vfm.config import load_config
    from vfm.engine.run_config import RunConfig
    from vfm.engine.trainer import Trainer

    ddp = tmp_path / "ddp"
    run(ddp, 2, "data.batch_size=143")  # 143 per rank: the same 286-record batches of the same partition
    replicas = [json.loads((ddp / f"replica_{rank}.json").read_text()) for rank in (0, 1)]
    assert replicas[0] == replicas[1]  # identical weights and accounting on both ranks
    single = Trainer(load_config(CONFIG, [*COMMON[:-2], f"work_dir={tmp_path / 'single'}"], RunConfig), tmp_path / "single")
    single.train()
    history = single.objective.history
    assert [h["epsilon_last_iterate"] for h in replicas[0]["history"]] == pytest.approx(
        [h["epsilon_last_iterate"] for h in history], rel=1e-12)
    assert replicas[0]["history"][-1]["sigma"] == history[-1]["sigma"]
    weights = load_file(ddp / "model.safetensors")
    for key, value in single.objective.state_dict().items():  # the same noise once per step: only summation order differs
        torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=key)
        assert value.abs().max() > 0.05
