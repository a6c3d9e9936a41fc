"""DataLoaders over registered datasets: map-style with resumable, seeded batch samplers, or streams.

A map-style dataset (`__getitem__` + `__len__`) is read through a registered batch sampler (`data.sampler`,
default `resumable`) keyed by `(epoch, index)`, so a resumed run continues at the exact sample. An
`IterableDataset` (a stream: webdataset shards, generated records) splits itself by rank and worker and
reports its position through `state_dict()` / `load_state_dict()`; torchdata's `StatefulDataLoader` collects
that state from every worker, so a stream resumes exactly too (at the worker count it was started with).
"""

from __future__ import annotations

import re
import signal
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data.dataloader import default_collate

from vfm.data.sampler import ResumableBatchSampler, SeededDataset
from vfm.data.samplers import PROVIDED
from vfm.errors import DataError, VfmError
from vfm.registry import DATASETS, SAMPLERS


def build_dataset(node: Any, path: str) -> Any:
    """Build dataset `node`; its DataErrors are prefixed with the config path."""
    try:
        dataset = DATASETS.build(node, path)
    except DataError as error:
        # "root: ..." from the dataset names one of its keys: "data.train.root: ..."; other messages (a file
        # path first) read better after the node's path: "data.train: /data/x.json: ...".
        joined = f"{path}.{error}" if re.match(r"[A-Za-z_][\w.]*: ", str(error)) else f"{path}: {error}"
        raise DataError(joined) from error
    if not isinstance(dataset, IterableDataset) and len(dataset) == 0:
        raise DataError(f"{path}: dataset is empty")
    return dataset


def is_stream(dataset: Any) -> bool:
    """Whether `dataset` is a stream (an IterableDataset) rather than map-style."""
    return isinstance(dataset, IterableDataset)


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader worker init: Ctrl-C reaches the whole process group, but only the main process decides what it
    means (finish the step, checkpoint, exit); forked workers would run the Trainer's handler as well."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _collate(dataset: Any) -> Any:
    collate = getattr(dataset, "collate_fn", None) or default_collate  # variable-size samples (detection)

    def collate_or_empty(samples: list[Any]) -> Any:
        return collate(samples) if samples else {}  # an empty Poisson draw

    return collate_or_empty


def build_loader(node: Any, path: str, data_cfg: Any, seed: int, train: bool, rank: int = 0, world_size: int = 1,
                 sampler_node: Any = None, batch_size: int | None = None) -> DataLoader:
    """A loader for dataset `node`: training shuffles by (seed, epoch) and drops the last partial batch.

    `batch_size` overrides data's (an evaluation set's own size); by default training uses data.batch_size and
    evaluation data.val_batch_size, else data.batch_size.
    """
    dataset = build_dataset(node, path)
    if batch_size is None:
        batch_size = data_cfg.batch_size if train else (data_cfg.val_batch_size or data_cfg.batch_size)
    if is_stream(dataset):
        from torchdata.stateful_dataloader import StatefulDataLoader

        # torchdata 0.11 calls a torch API deprecated since; the warning says nothing a user can act on.
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        return StatefulDataLoader(dataset, batch_size=batch_size, num_workers=data_cfg.num_workers,
                                  pin_memory=data_cfg.pin_memory, drop_last=train, collate_fn=_collate(dataset),
                                  generator=torch.Generator().manual_seed(seed + rank), worker_init_fn=ignore_interrupts)
    if train:
        node = sampler_node if sampler_node is not None else {"type": "resumable"}
        batch_sampler = SAMPLERS.build(node, "data.sampler", size=len(dataset), batch_size=batch_size, seed=seed,
                                       rank=rank, world_size=world_size)
    else:  # evaluation shards without padding, so metrics summed over ranks count each sample once
        batch_sampler = ResumableBatchSampler(len(dataset), batch_size, seed, rank, world_size, train=False)
    return DataLoader(
        SeededDataset(dataset, seed),
        batch_sampler=batch_sampler,
        num_workers=data_cfg.num_workers,
        pin_memory=data_cfg.pin_memory,
        collate_fn=_collate(dataset),
        worker_init_fn=ignore_interrupts,
        # A private generator keeps worker seeding from consuming the global RNG, which would
        # otherwise shift dropout masks after a resume.
        generator=torch.Generator().manual_seed(seed),
    )


_WORKER_ERROR = re.compile(r"^Caught (\w+) in DataLoader worker process (\d+)")


def worker_error_message(error: BaseException) -> str | None:
    """One line for an error a DataLoader worker raised (torch re-raises it carrying the worker's traceback)."""
    match = _WORKER_ERROR.match(str(error))
    if match is None:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    name, _, message = lines[-1].partition(": ")  # the original's own line: "vfm.errors.DataError: data.train: ..."
    if isinstance(error, VfmError) and message:
        return message
    return f"DataLoader worker process {match.group(2)}: {name.rsplit('.', 1)[-1]}: {message or name}"


def validate_sampler(node: Any) -> None:
    """Check a `data.sampler` node before any work."""
    if node is not None:
        SAMPLERS.validate(node, "data.sampler", provided=PROVIDED)


def underlying_dataset(loader: DataLoader) -> Any:
    """The registered dataset behind a loader (unwrapping the per-sample seeding)."""
    return getattr(loader.dataset, "dataset", loader.dataset)
