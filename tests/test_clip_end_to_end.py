"""The vision-language quick path as a user runs it: generate the captioned shapes, train CLIP a few steps on the
shards with the three named eval sets, evaluate the best checkpoint with tools/eval.py --set ... --out."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, run_tool

CLIP = REPO / "configs" / "clip" / "clip_vit_tiny_shapes.yaml"


@pytest.mark.slow
def test_generate_train_and_evaluate_named_sets(tmp_path):
    data = tmp_path / "shapes_captions"
    made = run_tool("make_shapes_captions", data, "--train", 300, "--val", 64, "--docs", 10, "--maxcount", 100,
                    "--image-size", 32, check=True)
    assert json.loads(made.stdout)["shards"] == {"train": 3, "val": 1, "docs": 1}
    small = [f"data.root={data}", "data.batch_size=16", "data.num_workers=1", "train.max_steps=4",
             "eval.interval=0", "eval.sets.linear_probe.evaluators.0.max_train_samples=64", "checkpoint.interval=0",
             "train.tensorboard=false", "train.progress_bar=never"]
    run_tool("train", CLIP, f"work_dir={tmp_path / 'run'}", *small, check=True)
    final = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    names = {f"{row['split']}/{k}" for row in final for k in row if k not in ("step", "split")}
    assert {"val/zeroshot/accuracy", "val/retrieval/i2t_r1", "val/linear_probe/accuracy", "train/logit_scale"} <= names
    out = tmp_path / "metrics.json"
    run_tool("eval", tmp_path / "run" / "config.yaml", tmp_path / "run" / "checkpoints" / "best.pt", "--set", "zeroshot",
             "--set", "retrieval", "--out", out, check=True)
    metrics = json.loads(out.read_text())
    text = json.dumps(metrics)
    assert "zeroshot/accuracy" in text and "retrieval/mean_recall" in text and "linear_probe" not in text


def test_tool_errors_are_one_line_with_exit_2(tmp_path):
    bad = run_tool("make_shards", "pairs", "--from", tmp_path / "missing.jsonl", "--out", tmp_path / "s-%06d.tar")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.jsonl'}: JSONL file not found"]
    (tmp_path / "r.jsonl").write_text('{"image": "x.png", "caption": "c"}\n')
    no_image = run_tool("make_shards", "pairs", "--from", tmp_path / "r.jsonl", "--images", tmp_path, "--out",
                        tmp_path / "s-%06d.tar")
    assert no_image.returncode == 2 and "record 000000000: image file" in no_image.stderr and "not found" in no_image.stderr
    typo = run_tool("train", CLIP, "objective.frezee=[text]", f"work_dir={tmp_path / 'w'}")
    assert typo.returncode == 2 and "unknown key 'objective.frezee' (did you mean 'objective.freeze'" in typo.stderr
    assert not list(tmp_path.glob("s-*.tar*"))  # nothing half-written
