"""Worker for test_collectives.py, started by torchrun: gathers features, backpropagates, saves what it saw."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

GLOBAL_BATCH = 8
FEATURES = 5
EMBED = 3


def make_problem() -> tuple[torch.nn.Linear, torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """The same two towers and global batch on every rank and in the single-process reference."""
    torch.manual_seed(0)
    image_tower = torch.nn.Linear(FEATURES, EMBED).double()
    text_tower = torch.nn.Linear(FEATURES, EMBED).double()
    images = torch.randn(GLOBAL_BATCH, FEATURES, dtype=torch.float64)
    texts = torch.randn(GLOBAL_BATCH, FEATURES, dtype=torch.float64)
    return image_tower, text_tower, images, texts


def clip_loss(
    image_rows: torch.Tensor, text_rows: torch.Tensor, all_images: torch.Tensor, all_texts: torch.Tensor, first_row: int
) -> torch.Tensor:
    """Symmetric contrastive loss of some rows (starting at global row `first_row`) against all columns."""
    labels = torch.arange(first_row, first_row + image_rows.shape[0])
    image_loss = F.cross_entropy(4.0 * F.normalize(image_rows, dim=1) @ F.normalize(all_texts, dim=1).T, labels)
    text_loss = F.cross_entropy(4.0 * F.normalize(text_rows, dim=1) @ F.normalize(all_images, dim=1).T, labels)
    return (image_loss + text_loss) / 2


def shard_bounds(rank: int, uneven: bool) -> tuple[int, int]:
    """Rows of the global batch that `rank` of 2 holds: 5 and 3 when uneven, else 4 and 4."""
    split = 5 if uneven else 4
    return (0, split) if rank == 0 else (split, GLOBAL_BATCH)


def run_case(rank: int, local_loss: bool, uneven: bool) -> dict[str, torch.Tensor]:
    from vfm.dist import all_gather, all_reduce_mean

    image_tower, text_tower, images, texts = make_problem()
    start, stop = shard_bounds(rank, uneven)
    image_features = image_tower(images[start:stop])
    text_features = text_tower(texts[start:stop])
    image_features.retain_grad()
    all_images, all_texts = all_gather(image_features), all_gather(text_features)
    if local_loss:
        loss = clip_loss(image_features, text_features, all_images, all_texts, start)
    else:
        loss = clip_loss(all_images, all_texts, all_images, all_texts, 0)
    loss.backward()
    result = {"gathered": all_images.detach(), "feature_grad": image_features.grad, "loss": loss.detach()}
    for name, parameter in [*image_tower.named_parameters("image"), *text_tower.named_parameters("text")]:
        result[name] = all_reduce_mean(parameter.grad)  # what DDP does to parameter gradients
    return result


def main(out_dir: str) -> None:
    from vfm.dist import (
        all_reduce_mean,
        destroy_distributed,
        get_rank,
        get_world_size,
        init_distributed,
        is_main_process,
        read_launch_env,
    )

    env = read_launch_env()
    assert init_distributed(env, timeout_s=60)
    rank = get_rank()
    results = {
        "env": (env.rank, env.world_size, env.local_rank, env.launcher),
        "helpers": (get_rank(), get_world_size(), is_main_process()),
        "mean": all_reduce_mean(torch.tensor([rank + 1.0, 10.0 * (rank + 1)])),
        "int_mean": all_reduce_mean(torch.tensor([rank], dtype=torch.long)),
        "full": run_case(rank, local_loss=False, uneven=True),
        "local": run_case(rank, local_loss=True, uneven=False),
    }
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
