"""Reading webdataset tar shards: URL lists with brace expansion, opening local/remote shards, raw samples by key."""

from __future__ import annotations

import glob
import logging
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from braceexpand import braceexpand

from vfm.errors import DataError

logger = logging.getLogger(__name__)


def _expand_one(pattern: str) -> list[str]:
    urls = list(braceexpand(pattern))
    if "://" in pattern or pattern.startswith("pipe:") or not any(c in pattern for c in "*?["):
        return urls
    return [match for url in urls for match in sorted(glob.glob(url))]  # local wildcards: shards/train-*.tar


def expand_urls(urls: str | list[str]) -> list[str]:
    """Shard URLs from a brace pattern (`shards/{000000..000041}.tar`), a local wildcard (`shards/train-*.tar`),
    `::`-joined patterns, or a list of them."""
    patterns = [urls] if isinstance(urls, str) else list(urls)
    expanded = [url for pattern in patterns for part in str(pattern).split("::") if part.strip()
                for url in _expand_one(part.strip())]
    if not expanded:
        raise DataError(f"urls: {urls!r} names no shard")
    return expanded


def check_local_shards(urls: list[str]) -> None:
    """A missing local shard is an error before any work (remote ones are found out when opened)."""
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"urls: shard {missing[0]} not found{more}")


def open_url(url: str) -> IO[bytes]:
    """A byte stream of one shard: a local file, `s3://` through the AWS CLI, or any webdataset `gopen` URL."""
    if "://" not in url and not url.startswith("pipe:"):
        return open(url, "rb")  # noqa: SIM115 - the caller closes it
    if url.startswith("s3://"):
        # An argument list, not a shell: the URL cannot inject a command.
        process = subprocess.Popen(["aws", "s3", "cp", url, "-"], stdout=subprocess.PIPE)
        return process.stdout  # type: ignore[return-value]
    import webdataset

    return webdataset.gopen(url, "rb")


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member, webdataset's convention: the extension starts at the basename's first dot."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


class _CountingReader:
    """A read-only byte stream that counts what it hands out (to tell a complete tar from a truncated one)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.total = stream, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.total += len(data)
        return data

    def drain(self) -> int:
        """Read to the end; the total number of bytes of the stream."""
        while self.read(1 << 16):
            pass
        return self.total


def raw_samples(url: str, on_error: str, counts: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Samples of one shard as {"__key__", "__url__", extension: bytes}, members grouped by consecutive key.

    An unreadable shard (missing, truncated, not a tar) raises a DataError naming it, or with `on_error="skip"`
    ends that shard, counted in `counts["skipped_shards"]`.
    """
    current: dict[str, Any] | None = None
    try:
        with open_url(url) as stream:
            reader = _CountingReader(stream)
            tar = tarfile.open(fileobj=reader, mode="r|*")
            for member in tar:
                if not member.isreg() or member.name.rpartition("/")[2].startswith("__"):  # __meta__ files
                    continue
                key, extension = split_name(member.name)
                data = tar.extractfile(member).read()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[extension] = data
                tar.members = []  # a stream over a large shard keeps no list of members
            # tarfile ends quietly at a cut-off header; a complete archive has two zero blocks after its last member.
            if reader.drain() < tar.offset + 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError(f"truncated after {reader.total} bytes (no end-of-archive blocks)")
    except (OSError, tarfile.TarError, EOFError) as error:
        if on_error != "skip":
            raise DataError(f"shard {url}: unreadable: {error}") from error
        counts["skipped_shards"] = counts.get("skipped_shards", 0) + 1
        logger.warning("data: skipped the rest of shard %s: %s (%d shards skipped so far by this worker)",
                       url, error, counts["skipped_shards"])
        current = None  # a sample cut by the damage is not trusted
    if current is not None:
        yield current
