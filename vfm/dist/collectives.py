"""Collectives that also work without a process group (a single process is a world of one)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank; 0 without a process group."""
    return dist.get_rank() if _initialized() else 0


def get_world_size() -> int:
    """Number of processes; 1 without a process group."""
    return dist.get_world_size() if _initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes checkpoints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank; nothing to wait for without a process group."""
    if _initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over ranks, as a new floating-point tensor; the input is left as it is.

    Sums and divides rather than using ReduceOp.AVG, which gloo has returned as a plain sum (PyTorch #162338).
    """
    result = tensor.detach().clone()
    if not result.is_floating_point():
        result = result.double()
    if get_world_size() > 1:
        dist.all_reduce(result, op=dist.ReduceOp.SUM)
        result /= get_world_size()
    return result


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's tensor on dim 0; gradients flow back to each rank's own rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world_size = dist.get_world_size()
        # rows may differ per rank (a last, smaller batch): gather the sizes, pad to the largest, trim after
        rows = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
        all_rows = [torch.zeros_like(rows) for _ in range(world_size)]
        dist.all_gather(all_rows, rows)
        sizes = [int(count.item()) for count in all_rows]
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        gathered = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(gathered, padded.contiguous())
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return torch.cat([part[:size] for part, size in zip(gathered, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated on dim 0 in rank order, differentiable; `tensor` itself in one process.

    Gradient convention (the one of `torch.distributed.nn.functional.all_gather`): the backward pass sums the
    gradient of the gathered tensor over ranks and returns this rank's rows. Each rank r computes a loss L_r on
    the gathered features; the sum makes rank r's gradient the exact gradient of sum_k L_k with respect to its
    rows, since every rank's loss depends on them. DDP then averages parameter gradients over ranks, so the model
    follows the gradient of mean_k L_k. Hence:

    - every rank computes the full loss over all gathered rows (open_clip's `local_loss=False`): mean_k L_k equals
      the single-process loss over the global batch, and the DDP-averaged gradients equal the single-process
      gradients; the raw gradient of the local rows is world_size times the single-process one, until DDP divides.
    - each rank computes the loss of its own rows against all columns (`local_loss=True`), each a mean over
      equal local batches: mean_k L_k again equals the single-process loss, with the same conclusion.

    Returning only this rank's slice without the sum (what open_clip does with `gather_with_grad=False`, by
    replacing its own rows with the grad-carrying tensor) drops the other ranks' contributions: with DDP the
    gradient then comes out world_size times too small for a full loss, and wrong, not just scaled, for a local one.
    """
    if not _initialized() or dist.get_world_size() == 1:
        return tensor
    return _AllGather.apply(tensor)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over ranks, as a new tensor (the input itself is left as it is)."""
    if not _initialized():
        return tensor.clone()
    total = tensor.clone()
    torch.distributed.all_reduce(total)
    return total


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order (`[obj]` in one process)."""
    if not _initialized():
        return [obj]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `tensor` (sizes may differ per rank) concatenated on dim 0 in rank order, on CPU."""
    if not _initialized():
        return tensor.detach().cpu()
    return torch.cat(all_gather_objects(tensor.detach().cpu()), dim=0)
