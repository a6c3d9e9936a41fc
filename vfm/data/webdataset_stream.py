"""Streams over webdataset shards that resume exactly: image-text pairs, labelled images, interleaved documents.

The order of one epoch is a pure function of (seed, epoch, rank, worker): shards are shuffled by (seed, epoch)
and dealt to the `world_size x num_workers` readers (or, `resampled`, drawn with replacement per reader, sources
picked by weight), and each reader's samples pass a seeded shuffle buffer. A reader's position is the number of
samples that left its buffer; resuming replays the epoch's raw bytes up to that position without decoding
them, so a resumed run repeats and skips no sample of its epoch (open_clip's loader restarts the epoch instead).
A sample that cannot be decoded (a broken image, a missing caption) is skipped and counted in the log, or, with
`on_error: raise`, stops the run with its shard and key. Random transforms draw from a seed of the sample's own,
so augmentation does not depend on worker count either.
"""

from __future__ import annotations

import io
import json
import logging
import random
import zlib
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from vfm.data.shard_reader import check_local_shards, expand_urls, raw_samples
from vfm.data.shard_writer import IMAGE_EXTENSIONS
from vfm.data.transforms import TransformNode, build_transforms
from vfm.dist import get_rank, get_world_size
from vfm.errors import ConfigError, DataError
from vfm.registry import DATASETS

logger = logging.getLogger(__name__)


class CorruptSample(Exception):
    """A sample whose content cannot be decoded (skipped or raised per `on_error`)."""


def _check_stream(kwargs: dict[str, Any], path: str) -> None:
    urls = kwargs.get("urls")
    if not urls:
        raise ConfigError(f"{path}.urls: expected a shard pattern or a list of them (e.g. shards/train-{{000000..000019}}.tar)")
    sources = [urls] if isinstance(urls, str) else list(urls)
    weights = kwargs.get("weights")
    if weights is not None:
        if len(weights) != len(sources) or any(not isinstance(w, (int, float)) or w <= 0 for w in weights):
            raise ConfigError(f"{path}.weights: got {list(weights)}, expected {len(sources)} positive numbers, one per "
                              "entry of urls")
        if not kwargs.get("resampled", False):
            raise ConfigError(f"{path}.weights: mixing sources by weight draws shards with replacement; set "
                              f"{path}.resampled: true")
    if kwargs.get("resampled", False) and not kwargs.get("epoch_samples"):
        raise ConfigError(f"{path}.epoch_samples: a resampled stream needs the number of samples of one epoch")
    if kwargs.get("on_error", "skip") not in ("skip", "raise"):
        raise ConfigError(f"{path}.on_error: got {kwargs['on_error']!r}, expected 'skip' or 'raise'")
    if kwargs.get("split_by", "shards") not in ("shards", "samples"):
        raise ConfigError(f"{path}.split_by: got {kwargs['split_by']!r}, expected 'shards' or 'samples'")
    if (kwargs.get("shuffle_buffer") or 0) < 0:
        raise ConfigError(f"{path}.shuffle_buffer: got {kwargs['shuffle_buffer']}, expected >= 0")


def _seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % 2**61
    return value


class ShardStream(IterableDataset):
    """The shard-reading, splitting, shuffling and resuming core; subclasses turn raw members into samples."""

    def __init__(self, urls: str | list[str], weights: list[float] | None = None, resampled: bool = False,
                 epoch_samples: int | None = None, num_samples: int | None = None, shuffle_buffer: int = 1000,
                 shuffle_shards: bool = True, split_by: Literal["shards", "samples"] = "shards", seed: int = 0,
                 on_error: Literal["skip", "raise"] = "skip", transforms: list[TransformNode] | None = None) -> None:
        # Shards are looked up when the dataset is built (before training), not when the config is validated.
        self.sources = [expand_urls(u) for u in ([urls] if isinstance(urls, str) else urls)]
        for source in self.sources:
            check_local_shards(source)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.sources)
        self.resampled, self.epoch_samples, self.num_samples = resampled, epoch_samples, num_samples
        self.shuffle_buffer, self.shuffle_shards, self.split_by = shuffle_buffer, shuffle_shards, split_by
        self.seed, self.on_error = seed, on_error
        self.transform = build_transforms(transforms, "transforms")
        self.epoch, self.emitted, self.skipped = 0, 0, 0
        self.counts: dict[str, int] = {}

    # -------------------------------------------------------------------------------- resumable position
    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first sample."""
        self.epoch, self.emitted = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """This reader's position: samples that left its shuffle buffer this epoch, and skipped ones so far."""
        return {"epoch": self.epoch, "emitted": self.emitted, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at a saved position."""
        self.epoch, self.emitted, self.skipped = state["epoch"], state["emitted"], state.get("skipped", 0)

    def __len__(self) -> int:
        """Samples per rank and epoch (resampled: epoch_samples; else num_samples when given)."""
        total = self.epoch_samples if self.resampled else self.num_samples
        if total is None:
            raise TypeError("this shard stream has no length: set num_samples (or resampled + epoch_samples)")
        return total // get_world_size()

    # ------------------------------------------------------------------------------------ the epoch order
    def _reader(self) -> tuple[int, int]:
        """(this reader's index, number of readers) over ranks x workers."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return get_rank() * workers + worker, get_world_size() * workers

    def _shards(self, reader: int, readers: int) -> Iterator[str]:
        """The shards this reader reads this epoch, in order."""
        if self.resampled:
            rng = random.Random(_seed(self.seed, self.epoch, reader, 1))
            while True:
                source = rng.choices(range(len(self.sources)), weights=self.weights)[0]
                yield rng.choice(self.sources[source])
        shards = [url for source in self.sources for url in source]
        if self.shuffle_shards:
            random.Random(_seed(self.seed, self.epoch, 2)).shuffle(shards)
        if self.split_by == "samples":
            yield from shards
            return
        if get_world_size() > 1 and len(shards) < get_world_size():
            raise DataError(f"urls: {len(shards)} shards for {get_world_size()} ranks; every rank needs at least one "
                            "(write smaller shards, or use split_by: samples or resampled: true)")
        if len(shards) < readers and reader == 0 and self.epoch == 0 and self.emitted == 0:
            logger.warning("data: %d shards for %d readers (ranks x workers): %d workers idle", len(shards), readers,
                           readers - len(shards))
        yield from shards[reader::readers]

    def _raw(self, reader: int, readers: int) -> Iterator[dict[str, Any]]:
        """Raw samples of this reader, before the shuffle buffer."""
        index = 0
        for url in self._shards(reader, readers):
            for sample in raw_samples(url, self.on_error, self.counts):
                if self.split_by == "samples" and not self.resampled:
                    index += 1
                    if (index - 1) % readers != reader:
                        continue
                yield sample

    def _shuffled(self, samples: Iterator[dict[str, Any]], reader: int) -> Iterator[dict[str, Any]]:
        """A seeded shuffle buffer (webdataset's algorithm: a random slot is emitted and refilled)."""
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        rng = random.Random(_seed(self.seed, self.epoch, reader, 3))
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            slot = rng.randrange(len(buffer))
            buffer[slot], sample = sample, buffer[slot]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[Any]:
        reader, readers = self._reader()
        quota = None
        if self.resampled:
            quota = self.epoch_samples // readers + (1 if reader < self.epoch_samples % readers else 0)
        resume_at, position = self.emitted, 0
        for raw in self._shuffled(self._raw(reader, readers), reader):
            if quota is not None and position >= quota:
                break
            position += 1
            if position <= resume_at:
                continue  # replayed to find the saved position, never decoded
            self.emitted = position  # counted before yielding: the state then says "this one is consumed"
            try:
                sample = self.decode(raw)
            except CorruptSample as error:
                self.skipped += 1
                where = f"sample {raw['__key__']} of shard {raw['__url__']}"
                if self.on_error == "raise":
                    raise DataError(f"{where}: {error}") from error
                logger.warning("data: skipped %s: %s (%d samples skipped so far by this reader)", where, error,
                               self.skipped)
                continue
            yield sample
        # A finished pass starts over when iterated again (an evaluation set read in the main process).
        self.emitted = 0

    # ------------------------------------------------------------------------------------------ decoding
    def decode(self, raw: dict[str, Any]) -> Any:
        """One sample from its raw members; raises CorruptSample for content that cannot be used."""
        raise NotImplementedError

    def decode_image(self, data: bytes, key: str) -> torch.Tensor:
        """An RGB float image in [0, 1] after the transforms (seeded by the sample's key and the epoch)."""
        try:
            with Image.open(io.BytesIO(data)) as opened:
                pixels = np.asarray(opened.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise CorruptSample(f"cannot decode image: {str(error).splitlines()[0] if str(error) else error}") from error
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(torch.float32) / 255.0
        if self.transform is None:
            return image
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_seed(self.seed, self.epoch, zlib.crc32(key.encode())))
            return self.transform(image)

    @staticmethod
    def image_member(raw: dict[str, Any]) -> bytes:
        """The bytes of the sample's image member."""
        for extension in IMAGE_EXTENSIONS:
            if extension in raw:
                return raw[extension]
        raise CorruptSample(f"no image member (expected one of {', '.join(IMAGE_EXTENSIONS)}; has "
                            f"{', '.join(k for k in raw if not k.startswith('__'))})")


def _label(raw: dict[str, Any]) -> int:
    try:
        return int(raw["cls"].decode().strip())
    except (ValueError, UnicodeDecodeError) as error:
        raise CorruptSample(f"label {raw['cls'][:20]!r} is not an integer") from error


@DATASETS.register("image_text_shards", check=_check_stream)
class ImageTextShards(ShardStream):
    """Image-text pairs: {"image", "text", "label" (-1 without a .cls member), "key"}."""

    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        if "txt" in raw:
            try:
                text = raw["txt"].decode("utf-8").strip()
            except UnicodeDecodeError as error:
                raise CorruptSample("caption is not UTF-8") from error
        else:
            raise CorruptSample("no caption (.txt member)")
        if not text:
            raise CorruptSample("empty caption")
        image = self.decode_image(self.image_member(raw), raw["__key__"])
        return {"image": image, "text": text, "label": _label(raw) if "cls" in raw else -1, "key": raw["__key__"]}


@DATASETS.register("labelled_image_shards", check=_check_stream)
class LabelledImageShards(ShardStream):
    """Classification shards: {"image", "label"}."""

    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        if "cls" not in raw:
            raise CorruptSample("no label (.cls member)")
        return {"image": self.decode_image(self.image_member(raw), raw["__key__"]), "label": _label(raw)}


@DATASETS.register("interleaved_shards", check=_check_stream)
class InterleavedShards(ShardStream):
    """Interleaved documents: {"key", "slots": [("text", str) | ("image", tensor)], ...} in reading order."""

    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        try:
            slots = json.loads(raw["json"])["slots"]
        except (KeyError, ValueError, TypeError) as error:
            raise CorruptSample("no readable 'slots' in the .json member") from error
        out: list[tuple[str, Any]] = []
        for i, slot in enumerate(slots):
            if isinstance(slot, dict) and isinstance(slot.get("text"), str):
                out.append(("text", slot["text"]))
            elif isinstance(slot, dict) and str(slot.get("image", "")).lower() in raw:
                out.append(("image", self.decode_image(raw[slot["image"].lower()], f"{raw['__key__']}/{i}")))
            else:
                raise CorruptSample(f"slot {slot!r} is neither text nor an image member of the sample")
        return {"key": raw["__key__"], "slots": out}

    @staticmethod
    def collate_fn(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """Documents differ in length: a batch is lists."""
        return {"key": [s["key"] for s in samples], "slots": [s["slots"] for s in samples]}
