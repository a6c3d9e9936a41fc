"""With 2 gloo ranks the DDP-averaged gradients of the contrastive losses equal one process on the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from contrastive_ddp_worker import GLOBAL_BATCH, MODES, gradients
from test_collectives import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("contrastive")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(Path(__file__).with_name("contrastive_ddp_worker.py")), str(out)]
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("mode", list(MODES))
def test_two_ranks_give_the_single_process_gradients(ranks, mode):
    reference = gradients(mode, slice(0, GLOBAL_BATCH))
    for name, expected in reference.items():
        for rank in ranks:
            torch.testing.assert_close(rank[f"{mode}/{name}"], expected, rtol=1e-10, atol=1e-12, msg=f"{mode} {name}")
