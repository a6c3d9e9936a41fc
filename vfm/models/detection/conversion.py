"""Shared pieces of the detection checkpoint converters: strict key accounting, class-row reduction, file I/O.

A converter maps a foreign state dict to vfm's keys and says, for every classifier it produced, what its rows
are (`RowRole`). Class rows are reduced by that role, never by a key pattern: the two-stage proposal head of
Deformable DETR has a classifier's shape but its row 0 is an objectness score, not a category.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
from torch import Tensor

from vfm.errors import CheckpointError


class RowRole(Enum):
    """What the output rows of a classifier mean."""

    CATEGORIES = "one row per category id"
    CATEGORIES_THEN_NO_OBJECT = "one row per category id, then the no-object row"
    OBJECTNESS = "row 0 scores proposals (trained with every label 0); the other rows are not categories"


@dataclass
class Converted:
    """A converted state dict plus the role of each classifier in it (module path -> role)."""

    state_dict: dict[str, Tensor]
    class_heads: dict[str, RowRole] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was dropped or filled, for the CLI to print


def key_list(keys: Iterable[str], limit: int = 6) -> str:
    """'a, b, c, ... (N in all)' for an error message."""
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_accounting(where: str, unknown: Iterable[str] = (), missing: Iterable[str] = ()) -> None:
    """One-line CheckpointError naming unknown source keys and missing expected keys, if any."""
    unknown, missing = sorted(unknown), sorted(missing)
    parts = []
    if unknown:
        parts.append(f"unknown keys {key_list(unknown)}")
    if missing:
        parts.append(f"missing keys {key_list(missing)}")
    if parts:
        raise CheckpointError(f"{where}: {'; '.join(parts)}")


def unwrap(state_dict: Mapping[str, object]) -> Mapping[str, Tensor]:
    """The weights of a checkpoint file: its `model` (official repos) or `state_dict` (mmengine) entry, or itself."""
    for wrapper in ("model", "state_dict"):
        inner = state_dict.get(wrapper)
        if isinstance(inner, Mapping):
            return inner
    return state_dict  # type: ignore[return-value]


def layer_indices(keys: Iterable[str], prefix: str) -> list[int]:
    """Sorted indices i of keys `prefix.{i}.*`."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def read_category_ids(ann_file: str | Path) -> list[int]:
    """Sorted category ids of a COCO-format annotation file (vfm's contiguous label order)."""
    try:
        categories = json.loads(Path(ann_file).read_text())["categories"]
        ids = sorted(int(c["id"]) for c in categories)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{ann_file}: cannot read the category ids ({type(error).__name__}: {error})") from error
    if not ids:
        raise CheckpointError(f"{ann_file}: no categories")
    return ids


def class_rows(role: RowRole, num_rows: int, category_ids: list[int], module: str) -> list[int]:
    """Source rows to keep, in vfm's label order, for a classifier of `num_rows` rows playing `role`."""
    if role is RowRole.OBJECTNESS:
        # Keep row 0 (the proposal score) in place; the rest carry no category, so the first ones give the shape.
        if len(category_ids) > num_rows:
            raise CheckpointError(f"{module}: {num_rows} rows, cannot give {len(category_ids)} classes")
        return list(range(len(category_ids)))
    num_categories = num_rows - 1 if role is RowRole.CATEGORIES_THEN_NO_OBJECT else num_rows
    if max(category_ids) >= num_categories:
        raise CheckpointError(
            f"{module}: {num_categories} category rows ({role.value}), cannot select category id {max(category_ids)}"
        )
    return category_ids + ([num_rows - 1] if role is RowRole.CATEGORIES_THEN_NO_OBJECT else [])


def select_class_rows(converted: Converted, category_ids: list[int]) -> dict[str, Tensor]:
    """Reduce every classifier of `converted` to `category_ids` (sorted raw ids -> contiguous labels) by its role."""
    selected = dict(converted.state_dict)
    for module, role in converted.class_heads.items():
        for name in ("weight", "bias"):
            key = f"{module}.{name}"
            if key not in selected:
                raise CheckpointError(f"{key}: classifier {module} ({role.value}) has no {name}")
            value = selected[key]
            selected[key] = value[class_rows(role, value.shape[0], category_ids, module)].clone()
    return selected


def convert_checkpoint_file(
    source: str | Path,
    destination: str | Path,
    convert: Callable[[Mapping[str, Tensor], str], Converted],
    ann_file: str | Path | None = None,
) -> Converted:
    """Load `source` weights-only, convert with `convert(state_dict, "model.")`, reduce class rows, save safetensors.

    Keys get the objective's `model.` prefix, so `load_from` and tools/eval.py take the file as it is.
    """
    from vfm.weights import load_state_dict_file, save_safetensors

    # facebookresearch/detr and Deformable-DETR files carry their argparse.Namespace `args`: a plain attribute bag,
    # allowed beside tensors; anything else that is not weights still fails the weights-only load.
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = load_state_dict_file(source)
    converted = convert(state, "model.")
    if ann_file is not None:
        converted.state_dict = select_class_rows(converted, read_category_ids(ann_file))
    save_safetensors(converted.state_dict, Path(destination))
    return converted


def equal_copies(state_dict: Mapping[str, Tensor], keys: list[str], where: str) -> Tensor:
    """The common value of `keys` (entries of one shared module saved several times); error if they differ."""
    first = state_dict[keys[0]]
    for key in keys[1:]:
        if not torch.equal(state_dict[key], first):
            raise CheckpointError(f"{where}: {key} differs from {keys[0]}, yet the heads are shared")
    return first


def converter_main(
    argv: Sequence[str] | None, prog: str, about: str, source_help: str, convert: Callable[..., Converted]
) -> int:
    """The converters' CLI: SRC DST [--ann-file ANN] [--debug]; a `VfmError` is one line on stderr, exit status 2."""
    import sys

    from vfm.errors import VfmError

    parser = argparse.ArgumentParser(prog=prog, description=about)
    parser.add_argument("source", help=source_help)
    parser.add_argument("destination", help="output .safetensors with vfm's keys (for load_from and tools/eval.py)")
    parser.add_argument(
        "--ann-file", help="COCO annotation file: keep the class rows of its categories (sorted ids -> labels 0..C-1)"
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        converted = convert_checkpoint_file(args.source, args.destination, convert, args.ann_file)
    except VfmError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in converted.notes:
        print(f"note: {note}")
    heads = ", ".join(f"{module} ({role.name.lower()})" for module, role in converted.class_heads.items())
    print(f"wrote {len(converted.state_dict)} tensors to {args.destination}; classifiers: {heads}")
    return 0
