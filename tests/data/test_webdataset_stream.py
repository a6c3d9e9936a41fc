"""Shard streams: round trip, order under a seed, rank/worker splits, corrupt samples, resampling, exact resume."""

from __future__ import annotations

import itertools
import logging
import tarfile

import pytest
import torch
from shard_fixtures import make_pairs
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

import vfm.data.webdataset_stream as stream_module
from vfm.data.shard_reader import expand_urls
from vfm.data.webdataset_stream import ImageTextShards, InterleavedShards, LabelledImageShards
from vfm.errors import ConfigError, DataError
from vfm.registry import DATASETS


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    make_pairs(root, 40, 10)
    return str(root / "shards" / "pairs-{000000..000003}.tar")


def keys(dataset, **loader) -> list[str]:
    return [k for batch in DataLoader(dataset, batch_size=4, **loader) for k in batch["key"]]


def test_round_trip_gives_the_same_samples_in_order(shards):
    samples = list(ImageTextShards(shards, shuffle_buffer=0, shuffle_shards=False))
    assert [s["key"] for s in samples] == [f"s{i:05d}" for i in range(40)]
    assert [s["text"] for s in samples] == [f"caption {i}" for i in range(40)]
    assert all(torch.all(s["image"] == i / 255.0) and s["image"].shape == (3, 8, 8) for i, s in enumerate(samples))
    assert [s["label"] for s in samples] == [i % 3 for i in range(40)]


def test_a_fixed_seed_fixes_the_shuffled_order_and_every_sample_comes_once(shards):
    first, again = keys(ImageTextShards(shards, seed=3)), keys(ImageTextShards(shards, seed=3))
    other = keys(ImageTextShards(shards, seed=4))
    assert first == again and first != other
    assert sorted(first) == sorted(other) == [f"s{i:05d}" for i in range(40)]
    epoch1 = ImageTextShards(shards, seed=3)
    epoch1.set_epoch(1)
    assert keys(epoch1) != first and sorted(keys(epoch1)) == sorted(first)


def test_workers_and_ranks_partition_the_epoch(shards, monkeypatch):
    with_workers = keys(ImageTextShards(shards, seed=1), num_workers=2)
    assert sorted(with_workers) == [f"s{i:05d}" for i in range(40)]
    monkeypatch.setattr(stream_module, "get_world_size", lambda: 2)
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(stream_module, "get_rank", lambda rank=rank: rank)
        parts.append(set(keys(ImageTextShards(shards, seed=1))))
    assert parts[0].isdisjoint(parts[1]) and len(parts[0] | parts[1]) == 40 and len(parts[0]) == 20
    by_samples = []
    for rank in (0, 1):  # evaluation: split by sample index, exact whatever the shard count
        monkeypatch.setattr(stream_module, "get_rank", lambda rank=rank: rank)
        by_samples.append(keys(ImageTextShards(shards, shuffle_buffer=0, shuffle_shards=False, split_by="samples")))
    assert by_samples[0] == [f"s{i:05d}" for i in range(0, 40, 2)] and len(by_samples[1]) == 20


def test_too_few_shards_for_the_ranks_is_one_line(shards, monkeypatch):
    monkeypatch.setattr(stream_module, "get_world_size", lambda: 8)
    with pytest.raises(DataError, match="4 shards for 8 ranks; every rank needs at least one"):
        next(iter(ImageTextShards(shards)))


def test_a_corrupt_sample_is_skipped_and_counted(tmp_path, caplog):
    make_pairs(tmp_path, 12, 6, corrupt=(4,))
    urls = str(tmp_path / "shards" / "pairs-*.tar")
    stream = ImageTextShards(urls, shuffle_buffer=0, shuffle_shards=False)
    with caplog.at_level(logging.WARNING):
        got = [s["key"] for s in stream]
    assert got == [f"s{i:05d}" for i in range(12) if i != 4]
    assert stream.state_dict()["skipped"] == 1
    assert "skipped sample s00004 of shard" in caplog.text and "cannot decode image" in caplog.text
    strict = ImageTextShards(urls, shuffle_buffer=0, shuffle_shards=False, on_error="raise")
    with pytest.raises(DataError, match=r"sample s00004 of shard .*pairs-000000.tar: cannot decode image"):
        list(strict)


def test_a_truncated_shard_ends_early_and_is_counted(tmp_path):
    paths = make_pairs(tmp_path, 12, 6)
    data = open(paths[0], "rb").read()
    open(paths[0], "wb").write(data[: len(data) // 2])
    stream = ImageTextShards(paths, shuffle_buffer=0, shuffle_shards=False)
    got = [s["key"] for s in stream]
    assert 0 < len(got) < 12 and got[-6:] == [f"s{i:05d}" for i in range(6, 12)]
    assert stream.counts["skipped_shards"] == 1
    with pytest.raises(DataError, match="pairs-000000.tar: unreadable"):
        list(ImageTextShards(paths, shuffle_buffer=0, shuffle_shards=False, on_error="raise"))


def test_resampled_sources_mix_by_weight_for_a_fixed_epoch_length(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_pairs(a, 20, 5)
    make_pairs(b, 20, 5)
    urls = [str(a / "shards" / "pairs-*.tar"), str(b / "shards" / "pairs-*.tar")]
    stream = ImageTextShards(urls, weights=[3, 1], resampled=True, epoch_samples=400, seed=0)
    got = list(stream)
    assert len(got) == 400 and len(stream) == 400
    # Which source each sample came from is in its shard URL: about 3/4 from the first.
    raw = list(itertools.islice(stream._raw(0, 1), 400))
    share = sum(str(a) in r["__url__"] for r in raw) / 400
    assert 0.65 < share < 0.85
    assert [s["key"] for s in ImageTextShards(urls, weights=[3, 1], resampled=True, epoch_samples=400)] == \
        [s["key"] for s in got]


def test_resume_mid_epoch_repeats_and_skips_nothing_at_two_workers(shards):
    loader = StatefulDataLoader(ImageTextShards(shards, seed=2, shuffle_buffer=8), batch_size=3, num_workers=2)
    seen, state = [], None
    for i, batch in enumerate(loader):
        seen += batch["key"]
        if i == 4:
            state, at = loader.state_dict(), len(seen)
    resumed = StatefulDataLoader(ImageTextShards(shards, seed=2, shuffle_buffer=8), batch_size=3, num_workers=2)
    resumed.load_state_dict(state)
    rest = [k for batch in resumed for k in batch["key"]]
    assert rest == seen[at:] and len(rest) > 0


def test_labelled_and_interleaved_shards(tmp_path):
    from PIL import Image

    from vfm.data.shard_writer import write_document_shards, write_labelled_shards

    for i in range(3):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"{i}.png")
    write_labelled_shards([{"key": f"k{i}", "image": f"{i}.png", "label": i} for i in range(3)], tmp_path,
                          str(tmp_path / "cls-%06d.tar"))
    assert [s["label"] for s in LabelledImageShards(str(tmp_path / "cls-000000.tar"), shuffle_buffer=0)] == [0, 1, 2]
    doc = {"key": "d0", "slots": [{"text": "first"}, {"image": "1.png"}, {"text": "then"}, {"image": "2.png"}]}
    write_document_shards([doc], tmp_path, str(tmp_path / "doc-%06d.tar"))
    with tarfile.open(tmp_path / "doc-000000.tar") as tar:
        assert tar.getnames() == ["d0.json", "d0.0.png", "d0.1.png"]
    (got,) = list(InterleavedShards(str(tmp_path / "doc-000000.tar")))
    assert [kind for kind, _ in got["slots"]] == ["text", "image", "text", "image"]
    assert got["slots"][1][1][0, 0, 0].item() == pytest.approx(1 / 255) and got["slots"][3][1][0, 0, 0].item() == pytest.approx(2 / 255)
    batch = InterleavedShards.collate_fn([got, got])
    assert batch["key"] == ["d0", "d0"] and len(batch["slots"]) == 2


def test_config_errors_name_the_key(shards, tmp_path):
    node = {"type": "image_text_shards", "urls": shards}
    with pytest.raises(ConfigError, match=r"data.train.weights: .*set data.train.resampled: true"):
        DATASETS.validate({**node, "weights": [1.0]}, "data.train")
    with pytest.raises(ConfigError, match="data.train.epoch_samples: a resampled stream needs"):
        DATASETS.validate({**node, "resampled": True}, "data.train")
    with pytest.raises(ConfigError, match="data.train.weights: got \\[1.0, 2.0\\], expected 1 positive"):
        DATASETS.validate({**node, "weights": [1.0, 2.0], "resampled": True, "epoch_samples": 8}, "data.train")
    with pytest.raises(DataError, match=r"urls: shard .*missing-000001.tar not found \(and 2 more\)"):
        DATASETS.build({**node, "urls": str(tmp_path / "missing-{000001..000003}.tar")}, "data.train")
    with pytest.raises(DataError, match=r"urls: '.*nothing-\*.tar' names no shard"):
        DATASETS.build({**node, "urls": str(tmp_path / "nothing-*.tar")}, "data.train")
    assert len(expand_urls(shards + "::" + shards)) == 8
