"""Collectives under torchrun with 2 gloo processes: the differentiable all-gather against one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_collectives_worker import GLOBAL_BATCH, clip_loss, make_problem, shard_bounds

from vfm.dist import all_gather, all_reduce_mean, barrier, get_rank, get_world_size, is_main_process

REPO = Path(__file__).resolve().parents[2]
WORLD = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run the worker once under torchrun; every test reads what the two ranks saved."""
    out = tmp_path_factory.mktemp("collectives")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(Path(__file__).with_name("dist_collectives_worker.py")),
        str(out),
    ]
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)]),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


def reference() -> dict[str, torch.Tensor]:
    """Single-process gradients of the global loss over the whole batch."""
    image_tower, text_tower, images, texts = make_problem()
    image_features, text_features = image_tower(images), text_tower(texts)
    image_features.retain_grad()
    loss = clip_loss(image_features, text_features, image_features, text_features, 0)
    loss.backward()
    result = {"gathered": image_features.detach(), "feature_grad": image_features.grad, "loss": loss.detach()}
    for name, parameter in [*image_tower.named_parameters("image"), *text_tower.named_parameters("text")]:
        result[name] = parameter.grad
    return result


def test_torchrun_environment_is_read(ranks):
    for rank, saved in enumerate(ranks):
        assert saved["env"] == (rank, WORLD, rank, "torchrun")
        assert saved["helpers"] == (rank, WORLD, rank == 0)


def test_all_reduce_mean_averages(ranks):
    # a sum would give [3, 30] (the gloo AVG bug, PyTorch #162338)
    for saved in ranks:
        torch.testing.assert_close(saved["mean"], torch.tensor([1.5, 15.0]), rtol=0, atol=1e-7)
        torch.testing.assert_close(saved["int_mean"], torch.tensor([0.5], dtype=torch.float64))


@pytest.mark.parametrize(("case", "uneven"), [("full", True), ("local", False)])
def test_all_gather_gradient_matches_one_process(ranks, case, uneven):
    expected = reference()
    for rank in range(WORLD):
        saved = ranks[rank][case]
        start, stop = shard_bounds(rank, uneven)
        torch.testing.assert_close(saved["gathered"], expected["gathered"], rtol=0, atol=1e-12)
        if case == "full":
            torch.testing.assert_close(saved["loss"], expected["loss"], rtol=0, atol=1e-12)
        # rank r's rows get the gradient of the sum of all ranks' losses: WORLD x the one-process gradient ...
        torch.testing.assert_close(
            saved["feature_grad"], WORLD * expected["feature_grad"][start:stop], rtol=0, atol=1e-12
        )
        # ... which DDP's average over ranks turns into exactly the one-process parameter gradient
        for name in ("image.weight", "image.bias", "text.weight", "text.bias"):
            torch.testing.assert_close(saved[name], expected[name], rtol=0, atol=1e-12)
    assert sum(stop - start for start, stop in (shard_bounds(r, uneven) for r in range(WORLD))) == GLOBAL_BATCH


def test_local_losses_average_to_the_global_loss(ranks):
    torch.testing.assert_close((ranks[0]["local"]["loss"] + ranks[1]["local"]["loss"]) / 2, reference()["loss"])


def test_without_process_group_everything_is_one_process():
    features = torch.randn(3, 2, requires_grad=True)
    assert all_gather(features) is features
    value = torch.tensor([2, 4])
    mean = all_reduce_mean(value)
    assert mean.dtype == torch.float64 and mean.tolist() == [2.0, 4.0] and value.dtype == torch.long
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    barrier()
