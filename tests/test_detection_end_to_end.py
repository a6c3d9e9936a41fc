"""Detection through the CLIs as a user runs it: generate shapes, train, evaluate, visualize, and bad data."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO, run_tool
from vfm.data.shapes import make_shapes_dataset

pytestmark = pytest.mark.slow

CONFIG = REPO / "configs" / "deformable_detr" / "deformable_detr_tiny_shapes.yaml"
SHORT = ["train.max_steps=40", "eval.interval=20", "checkpoint.interval=20", "train.log_interval=10",
         "scheduler.warmup_steps=5", "train.tensorboard=false", "data.batch_size=4"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, num_train=32, num_val=8, seed=3)
    return root


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    result = run_tool("train", CONFIG, f"data.root={shapes}", f"work_dir={work}", *SHORT, check=True)
    return work, result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def val_records(work):
    return [r for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"]


def test_train_logs_coco_metrics_and_writes_best(trained):
    work, result = trained
    records = val_records(work)
    assert [r["step"] for r in records] == [20, 40]
    for record in records:
        assert {"bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl"} <= record.keys()
        assert 0.0 <= record["bbox_AP"] <= 1.0 and record["bbox_APl"] == -1.0  # no large objects at 64 px
    train = [r for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert (work / "checkpoints" / "best.pt").is_file()
    assert "AP50" in result.stdout + result.stderr  # the COCO table is printed


def test_eval_cli_reproduces_the_run_metric(trained, tmp_path):
    work, _ = trained
    out = tmp_path / "metrics.json"
    result = run_tool("eval", work / "config.yaml", work / "checkpoints" / "step_00000040.pt", "--out", out, check=True)
    assert "bbox_AP50" in result.stdout
    final = val_records(work)[-1]
    metrics = json.loads(out.read_text())
    for key in ("bbox_AP", "bbox_AP50", "bbox_APs"):
        assert metrics[key] == pytest.approx(final[key], abs=1e-6)


def test_visualize_writes_one_png_per_image(trained, shapes, tmp_path):
    work, _ = trained
    out = tmp_path / "vis"
    result = run_tool("visualize_detections", work / "config.yaml", work / "checkpoints" / "best.pt", shapes / "val",
                      "--out", out, "--score-threshold", "0.0", check=True)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 8 and "wrote 8 image(s)" in result.stdout
    original = Image.open(next((shapes / "val").glob("*.png")))
    drawn = Image.open(pngs[0])
    assert drawn.size == (original.width * 4, original.height * 4)  # 64 px images are drawn 4x larger
    # threshold 0 draws every detection: the picture differs from the enlarged input
    enlarged = Image.open(shapes / "val" / pngs[0].name).convert("RGB").resize(drawn.size, Image.NEAREST)
    assert drawn.tobytes() != enlarged.tobytes()

    # A threshold nothing reaches: each image says so, with the highest score it had.
    strict = run_tool("visualize_detections", work / "config.yaml", work / "checkpoints" / "best.pt", shapes / "val",
                      "--out", tmp_path / "strict", "--score-threshold", "1.0", check=True)
    assert strict.stdout.count("no box scored >= 1.00 (the highest of") == 8, strict.stdout[-2000:]
    assert result.stdout.count("boxes scored >= 0.00") == 8

    missing = run_tool("visualize_detections", work / "config.yaml", work / "checkpoints" / "best.pt",
                       tmp_path / "nowhere", "--out", out)
    assert missing.returncode == 2 and "nowhere: no such image or folder" in missing.stderr


def test_bad_annotation_is_an_error_naming_file_and_id_or_skipped_with_a_count(shapes, tmp_path):
    ann = json.loads((shapes / "annotations" / "train.json").read_text())
    bad = ann["annotations"][0]
    bad["bbox"][2] = -3.0  # negative width
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(ann))
    args = [CONFIG, f"data.root={shapes}", f"data.train.ann_file={broken}", f"work_dir={tmp_path / 'run'}", *SHORT]
    result = run_tool("train", *args)
    assert result.returncode == 2
    assert str(broken) in result.stderr and f"annotation id {bad['id']}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback

    skipped = run_tool("train", *args, "+data.train.skip_invalid=true", "train.max_steps=2", "eval.interval=0")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "skipped 1 images (1 with invalid annotations, 0 with missing files)" in skipped.stdout + skipped.stderr


def test_missing_image_is_an_error_naming_the_file(shapes, tmp_path):
    copy = tmp_path / "shapes"
    shutil.copytree(shapes, copy)
    gone = sorted((copy / "train").glob("*.png"))[0]
    gone.unlink()
    result = run_tool("train", CONFIG, f"data.root={copy}", f"work_dir={tmp_path / 'run'}", *SHORT)
    assert result.returncode == 2
    assert str(gone) in result.stderr and "not found" in result.stderr


def test_too_few_classes_for_the_dataset_is_a_config_error(shapes, tmp_path):
    result = run_tool("train", CONFIG, f"data.root={shapes}", "objective.num_classes=2", f"work_dir={tmp_path}", *SHORT)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: objective.num_classes: got 2, but data.train ({shapes / 'annotations' / 'train.json'}) has 3 "
        "categories; set objective.num_classes=3")


def test_two_ranks_gather_predictions_for_the_same_coco_metrics(trained, shapes, tmp_path):
    """Evaluation with 2 torchrun ranks (each scores half the images, rank 0 gathers them) gives exactly the
    metrics of one process on the same checkpoint; training with 2 ranks (num_boxes averaged) runs too."""
    work = tmp_path / "ddp"
    env = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # load_from the single-process run's weights and no training steps beyond one: the 2-rank evaluation
    # at step 1 must equal tools/eval.py of the checkpoint that 2-rank run saved.
    result = subprocess.run(
        ["bash", str(REPO / "tools" / "dist_train.sh"), str(CONFIG), "2", f"data.root={shapes}", f"work_dir={work}",
         *SHORT, "train.max_steps=1", "optim.lr=1e-9", f"load_from={trained[0] / 'model.safetensors'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 processes (torchrun)" in result.stdout + result.stderr
    distributed = val_records(work)[-1]
    run_tool("eval", work / "config.yaml", work / "checkpoints" / "step_00000001.pt", "--out", tmp_path / "m.json",
             check=True)
    single = json.loads((tmp_path / "m.json").read_text())
    assert "COCO bbox AP on 8 images" in result.stdout + result.stderr  # both ranks' 4 images reached rank 0
    # Each rank runs batches of other sizes than one process does, so scores differ in the last float bits,
    # which can reorder near-tied detections of this barely trained model: equal to 1e-4, not bit for bit.
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm"):
        assert distributed[key] == pytest.approx(single[key], abs=1e-4), key
    assert single["bbox_AP50"] > 0.0  # a real detector, not an empty comparison
