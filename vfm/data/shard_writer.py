"""Write webdataset tar shards from JSONL records and image files (pairs, labelled images, interleaved documents).

Sample layout (webdataset's convention: members `<key>.<ext>` grouped by key):
- pairs: `<key>.<png|jpg|...>` image bytes, `<key>.txt` caption, `<key>.cls` label (when the record has one),
  `<key>.json` the whole record;
- labelled images: `<key>.<ext>`, `<key>.cls`;
- interleaved documents: `<key>.json` `{"slots": [{"text": ...} | {"image": "<i>.<ext>"}, ...]}` and the images
  as `<key>.<i>.<ext>`.
Each shard is written to a temporary name and renamed when complete, so a shard on disk is never half-written.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vfm.errors import ConfigError, DataError

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a bad line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: JSONL file not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON: {error.msg}") from error
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return rows


def _image_member(image_root: Path, relative: str, where: str) -> tuple[str, bytes]:
    """(extension, bytes) of an image file referenced by a record."""
    path = image_root / relative
    extension = path.suffix.lower().lstrip(".")
    if extension not in IMAGE_EXTENSIONS:
        raise DataError(f"{where}: image {relative!r} has extension {extension!r}, expected one of {IMAGE_EXTENSIONS}")
    if not path.is_file():
        raise DataError(f"{where}: image file {path} not found")
    return extension, path.read_bytes()


class _ShardSink:
    """Tar shards of at most `maxcount` samples, named by a printf pattern, each renamed into place when full."""

    def __init__(self, pattern: str, maxcount: int) -> None:
        if "%" not in pattern:
            raise ConfigError(f"--out {pattern!r}: expected a printf pattern with a shard number, e.g. shards/pairs-%06d.tar")
        if maxcount < 1:
            raise ConfigError(f"--maxcount: got {maxcount}, expected at least 1")
        self.pattern, self.maxcount = pattern, maxcount
        self.paths: list[str] = []
        self.tar: tarfile.TarFile | None = None
        self.count = 0

    def _open(self) -> None:
        path = self.pattern % len(self.paths)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.paths.append(path)
        self.tar = tarfile.open(path + ".tmp", "w")
        self.count = 0

    def _close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            os.replace(self.paths[-1] + ".tmp", self.paths[-1])
            self.tar = None

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample (its members by extension)."""
        if "." in key or "/" in key:
            raise DataError(f"sample key {key!r}: keys may not contain '.' or '/' (webdataset splits names at the first dot)")
        if self.tar is None or self.count >= self.maxcount:
            self._close()
            self._open()
        for extension, data in members.items():
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: same input, same bytes
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def finish(self) -> list[str]:
        """Close the last shard; the paths written."""
        self._close()
        return self.paths


def _keys(records: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for index, record in enumerate(records):
        yield str(record.get("key", f"{index:09d}")), record


def write_pair_shards(records: Iterable[dict[str, Any]], image_root: str | Path, pattern: str,
                      maxcount: int = 1000) -> list[str]:
    """Image-text pair shards from records with `image` and `caption` (or `text`), optional `label`."""
    sink, image_root = _ShardSink(pattern, maxcount), Path(image_root)
    for key, record in _keys(records):
        text = record.get("caption", record.get("text"))
        if not isinstance(record.get("image"), str) or not isinstance(text, str):
            raise DataError(f"record {key}: expected an 'image' path and a 'caption' (or 'text') string")
        extension, data = _image_member(image_root, record["image"], f"record {key}")
        members = {extension: data, "txt": text.encode(), "json": json.dumps(record).encode()}
        if record.get("label") is not None:
            members["cls"] = str(int(record["label"])).encode()
        sink.add(key, members)
    return sink.finish()


def write_labelled_shards(records: Iterable[dict[str, Any]], image_root: str | Path, pattern: str,
                          maxcount: int = 1000) -> list[str]:
    """Labelled image shards from records with `image` and an integer `label`."""
    sink, image_root = _ShardSink(pattern, maxcount), Path(image_root)
    for key, record in _keys(records):
        if not isinstance(record.get("image"), str) or not isinstance(record.get("label"), int):
            raise DataError(f"record {key}: expected an 'image' path and an integer 'label'")
        extension, data = _image_member(image_root, record["image"], f"record {key}")
        sink.add(key, {extension: data, "cls": str(record["label"]).encode()})
    return sink.finish()


def write_document_shards(records: Iterable[dict[str, Any]], image_root: str | Path, pattern: str,
                          maxcount: int = 1000) -> list[str]:
    """Interleaved document shards from records with `slots`: a list of {"text": str} or {"image": path}."""
    sink, image_root = _ShardSink(pattern, maxcount), Path(image_root)
    for key, record in _keys(records):
        slots = record.get("slots")
        if not isinstance(slots, list) or not slots:
            raise DataError(f"record {key}: expected a non-empty 'slots' list")
        members, out_slots = {}, []
        for i, slot in enumerate(slots):
            if isinstance(slot, dict) and isinstance(slot.get("text"), str):
                out_slots.append({"text": slot["text"]})
            elif isinstance(slot, dict) and isinstance(slot.get("image"), str):
                extension, data = _image_member(image_root, slot["image"], f"record {key} slot {i}")
                members[f"{len(members)}.{extension}"] = data
                out_slots.append({"image": f"{len(members) - 1}.{extension}"})
            else:
                raise DataError(f"record {key} slot {i}: expected {{'text': str}} or {{'image': path}}, got {slot!r}")
        sink.add(key, {"json": json.dumps({"slots": out_slots}).encode(), **members})
    return sink.finish()


def image_folder_records(root: str | Path) -> list[dict[str, Any]]:
    """Records of an image-folder tree (root/<class>/<image>): labels by sorted class name, as ImageFolder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class folders (expected root/<class>/<image>)")
    records = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
                records.append({"key": f"{label:04d}_{path.stem}".replace(".", "_"),
                                "image": str(path.relative_to(root)), "label": label})
    return records
