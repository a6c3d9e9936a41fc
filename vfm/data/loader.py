"""DataLoaders over registered datasets with resumable, seeded sampling."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch.utils.data import DataLoader

from vfm.data.sampler import ResumableSampler, SeededDataset
from vfm.errors import DataError
from vfm.registry import DATASETS


def build_loader(node: Any, path: str, data_cfg: Any, seed: int, train: bool, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader for dataset `node`; training loaders shuffle by (seed, epoch) and drop the last batch."""
    try:
        dataset = DATASETS.build(node, path)
    except DataError as error:
        # "root: ..." from the dataset names one of its keys: "data.train.root: ..."; other messages (a file
        # path first) read better after the node's path: "data.train: /data/x.json: ...".
        joined = f"{path}.{error}" if re.match(r"[A-Za-z_][\w.]*: ", str(error)) else f"{path}: {error}"
        raise DataError(joined) from error
    if len(dataset) == 0:
        raise DataError(f"{path}: dataset is empty")
    # Evaluation shards without padding, so metrics summed over ranks count each sample once.
    sampler = ResumableSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train)
    return DataLoader(
        SeededDataset(dataset, seed),
        batch_size=data_cfg.batch_size if train else (data_cfg.val_batch_size or data_cfg.batch_size),
        sampler=sampler,
        num_workers=data_cfg.num_workers,
        pin_memory=data_cfg.pin_memory,
        drop_last=train,
        # Datasets with variable-size samples (detection) say how to batch them.
        collate_fn=getattr(dataset, "collate_fn", None),
        # A private generator keeps worker seeding from consuming the global RNG, which would
        # otherwise shift dropout masks after a resume.
        generator=torch.Generator().manual_seed(seed),
    )
