"""vfm/engine/plot.py and tools/plot_metrics.py: curves from metrics.jsonl, and one-line errors for bad files."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from vfm.engine.plot import MetricsFileError, collect_series, plot_metrics, read_metrics

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(path: Path) -> Path:
    records = [
        {
            "step": step,
            "split": "train",
            "loss": 2.0 / step,
            "train_accuracy": 0.1 * step / 20,
            "lr": 1e-3,
            "samples_per_s": 800.0,
            "eta_s": 60.0 - step,
            "peak_mem_mb": 600.0,
            "epoch": 0,
        }
        for step in (20, 40, 60)
    ] + [{"step": 60, "split": "val", "accuracy": 0.9, "top5": 0.99}]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_one_subplot_per_metric(tmp_path: Path) -> None:
    metrics = _write_run(tmp_path / "metrics.jsonl")
    out, plotted = plot_metrics(metrics)
    assert out == tmp_path / "metrics.png"
    # Train curves first, in logged order; eta_s and epoch are bookkeeping and skipped by default.
    assert plotted == [
        "train/loss",
        "train/train_accuracy",
        "train/lr",
        "train/samples_per_s",
        "train/peak_mem_mb",
        "val/accuracy",
        "val/top5",
    ]
    width, height = _png_size(out)
    assert (width, height) == (3 * 450, 3 * 320)  # 7 subplots in 3 columns, 4.5 x 3.2 inches each at 100 dpi


def test_keys_select_by_name_or_split(tmp_path: Path) -> None:
    metrics = _write_run(tmp_path / "metrics.jsonl")
    out, plotted = plot_metrics(tmp_path, tmp_path / "sub" / "curves.png", keys=["loss", "val/accuracy"])
    assert plotted == ["train/loss", "val/accuracy"]
    assert _png_size(out) == (2 * 450, 320)
    assert metrics.exists()


def test_later_record_of_a_step_wins_after_resume() -> None:
    records = [
        {"step": 20, "loss": 1.0},
        {"step": 40, "loss": 0.8},
        {"step": 40, "loss": 0.7},
        {"step": 30, "loss": 0.9},
    ]
    assert collect_series(records) == {"train/loss": ([20, 30, 40], [1.0, 0.9, 0.7])}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "metrics.jsonl: metrics file not found"),
        ("", "metrics.jsonl: no metrics records (the file is empty)"),
        ('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \n', "metrics.jsonl:2: malformed JSON"),
        ('{"step": 1, "loss": 1.0}\n\n[1, 2]\n', "metrics.jsonl:3: expected an object with an integer 'step'"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "metrics.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MetricsFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_metrics(path)


def test_unknown_key_lists_available(tmp_path: Path) -> None:
    _write_run(tmp_path / "metrics.jsonl")
    with pytest.raises(MetricsFileError, match=r"no metric 'acc'; available: .*accuracy"):
        plot_metrics(tmp_path / "metrics.jsonl", keys=["acc"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "plot_metrics.py"), *args], capture_output=True, text=True, cwd=REPO
    )


def test_cli_writes_png_and_reports_errors_in_one_line(tmp_path: Path) -> None:
    metrics = _write_run(tmp_path / "metrics.jsonl")
    done = _cli(str(metrics), "--out", str(tmp_path / "curves.png"), "--keys", "loss")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {tmp_path / 'curves.png'}: train/loss"
    assert _png_size(tmp_path / "curves.png") == (450, 320)

    metrics.write_text('{"step": 1, "loss": 1.0}\nnot json\n')
    failed = _cli(str(metrics))
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [f"error: {metrics}:2: malformed JSON (Expecting value at column 1)"]


def test_output_below_a_file_or_a_folder_is_refused_before_plotting(tmp_path: Path) -> None:
    from vfm.errors import ConfigError

    metrics = _write_run(tmp_path / "metrics.jsonl")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match=r"--out: got .*a_file', expected a folder \(it is a file\)"):
        plot_metrics(metrics, tmp_path / "a_file" / "c.png")
    with pytest.raises(ConfigError, match=r"--out: got .*, expected an image file name \(it is a folder\)"):
        plot_metrics(metrics, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "metrics.jsonl"]


def test_sentinel_values_of_evaluations_are_left_out() -> None:
    records = [{"step": 10, "split": "val", "bbox_AP": 0.2, "bbox_APl": -1.0},
               {"step": 20, "split": "val", "bbox_AP": 0.3, "bbox_APl": 0.5},
               {"step": 20, "split": "train", "loss": -1.0}]  # a training value of -1 is a value
    series = collect_series(records)
    assert series["val/bbox_APl"] == ([20], [0.5])
    assert series["val/bbox_AP"] == ([10, 20], [0.2, 0.3])
    assert series["train/loss"] == ([20], [-1.0])
