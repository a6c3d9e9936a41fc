"""Worker for test_contrastive_ddp.py, started by torchrun: each rank's gradients of the contrastive losses on its
half of a global batch, averaged over ranks as DDP does (sum / world), saved per mode."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vfm.objectives.contrastive_losses import clip_loss, siglip_loss

GLOBAL_BATCH, FEATURES, EMBED = 8, 5, 3
MODES = {  # name: (loss, local_loss, gather_with_grad)
    "full_gather_with_grad": ("infonce", False, True),
    "local_gather_with_grad": ("infonce", True, True),
    "full_gather_local_grads": ("infonce", False, False),
    "sigmoid": ("sigmoid", False, True),
}


def problem() -> tuple[torch.nn.Linear, torch.nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same towers, temperature, bias and global batch everywhere."""
    torch.manual_seed(0)
    image_tower = torch.nn.Linear(FEATURES, EMBED).double()
    text_tower = torch.nn.Linear(FEATURES, EMBED).double()
    images = torch.randn(GLOBAL_BATCH, FEATURES, dtype=torch.float64)
    texts = torch.randn(GLOBAL_BATCH, FEATURES, dtype=torch.float64)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    return image_tower, text_tower, images, texts, scale, bias


def gradients(mode: str, rows: slice) -> dict[str, torch.Tensor]:
    """Gradients of the mode's loss computed from `rows` of the global batch (all rows in one process)."""
    loss_type, local, with_grad = MODES[mode]
    image_tower, text_tower, images, texts, scale, bias = problem()
    image = F.normalize(image_tower(images[rows]), dim=1)
    text = F.normalize(text_tower(texts[rows]), dim=1)
    if loss_type == "sigmoid":
        loss = siglip_loss(image, text, scale, bias)
    else:
        loss = clip_loss(image, text, scale, 0.1, local, with_grad)
    loss.backward()
    named = {"image.weight": image_tower.weight, "image.bias": image_tower.bias, "text.weight": text_tower.weight,
             "scale": scale}
    if loss_type == "sigmoid":
        named["bias"] = bias
    return {k: v.grad.clone() for k, v in named.items()}


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    half = GLOBAL_BATCH // world
    saved = {}
    for mode in MODES:
        grads = gradients(mode, slice(rank * half, (rank + 1) * half))
        for name, grad in grads.items():
            dist.all_reduce(grad)  # DDP's average: sum, then / world (not ReduceOp.AVG, see PyTorch #162338)
            saved[f"{mode}/{name}"] = grad / world
    torch.save(saved, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
