"""InternVL as a user runs it: stage 1 on the generated captioned shapes, stage 2 from its weights, then
tools/eval.py on the stage-2 checkpoint (which leaves the frozen towers out) with the G and C paths and captions."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO, run_tool

STAGE1 = REPO / "configs" / "internvl" / "stage1_tiny_shapes.yaml"
STAGE2 = REPO / "configs" / "internvl" / "stage2_tiny_shapes.yaml"


@pytest.mark.slow
def test_stage1_then_stage2_then_eval(tmp_path):
    data = tmp_path / "shapes_captions"
    run_tool("make_shapes_captions", data, "--train", 96, "--val", 32, "--docs", 4, "--maxcount", 100,
             "--image-size", 32, check=True)
    small = [f"data.root={data}", "data.batch_size=16", "data.num_workers=0", "train.max_steps=3", "eval.interval=0",
             "eval.sets.linear_probe.evaluators.0.max_train_samples=32", "checkpoint.interval=0",
             "train.tensorboard=false", "train.progress_bar=never", "data.train.shuffle_buffer=16"]
    run_tool("train", STAGE1, f"work_dir={tmp_path / 's1'}", *small, check=True)
    stage1_weights = tmp_path / "s1" / "model.safetensors"
    run_tool("train", STAGE2, f"work_dir={tmp_path / 's2'}", f"load_from={stage1_weights}", *small,
             "eval.sets.captions.evaluators.0.max_new_tokens=4", "checkpoint.interval=3", check=True)
    rows = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert {"loss_itc", "loss_itm", "loss_itg", "itm_accuracy"} <= set(train[-1])
    final = {r["split"]: r for r in rows if r["split"] != "train"}
    assert {"val/retrieval", "val/retrieval_c", "val/retrieval_q", "val/zeroshot_c", "val/captions"} <= set(final)

    # The step checkpoint holds the query path only (best.pt holds everything); evaluating it rebuilds the towers
    # from the seed and load_from.
    best = tmp_path / "s2" / "checkpoints" / "step_00000003.pt"
    saved = torch.load(best, map_location="cpu", weights_only=True)["model"]
    assert "model.qllama.query_tokens" in saved and any(".cross_attn." in k for k in saved)
    assert not any(k.startswith(("model.visual.", "model.qllama.llm.")) and ".cross_attn." not in k for k in saved)
    out = tmp_path / "metrics.json"
    run_tool("eval", tmp_path / "s2" / "config.yaml", best, "--set", "retrieval", "--set", "retrieval_c",
             "--set", "captions", "--out", out, check=True)
    metrics = json.loads(out.read_text())  # one checkpoint: its metrics
    # The same numbers as the run's own final evaluation: the frozen towers were rebuilt, not left random.
    assert metrics["retrieval_c/mean_recall"] == pytest.approx(final["val/retrieval_c"]["mean_recall"])
    assert metrics["retrieval/i2t_r1"] == pytest.approx(final["val/retrieval"]["i2t_r1"])
    assert metrics["captions/word_match"] == pytest.approx(final["val/captions"]["word_match"])
    # Without load_from the towers cannot be rebuilt: a step checkpoint is refused in one line (its fingerprint
    # differs), while best.pt, which holds every weight, needs no load_from.
    refused = run_tool("eval", tmp_path / "s2" / "config.yaml", best, "--set", "retrieval_c", "load_from=null")
    assert refused.returncode == 2 and "frozen weights this config builds" in refused.stderr.strip().splitlines()[-1]
    whole = tmp_path / "whole.json"
    run_tool("eval", tmp_path / "s2" / "config.yaml", tmp_path / "s2" / "checkpoints" / "best.pt", "--set", "retrieval_c",
             "load_from=null", "--out", whole, check=True)
    assert json.loads(whole.read_text())["retrieval_c/mean_recall"] == pytest.approx(final["val/retrieval_c"]["mean_recall"])

    typo = run_tool("train", STAGE2, f"work_dir={tmp_path / 'w'}", f"data.root={data}", "objective.qllama.num_querys=4")
    assert typo.returncode == 2 and "unknown key 'objective.qllama.num_querys' (did you mean 'objective.qllama.num_queries'" in typo.stderr
    added = run_tool("train", STAGE2, f"work_dir={tmp_path / 'w'}", f"data.root={data}", "+objective.qllama.num_querys=4")
    assert added.returncode == 2 and added.stderr.strip().splitlines() == [
        "error: objective.qllama.num_querys: unknown key (did you mean 'num_queries'?); accepted: tokenizer, path, config, "
        "num_queries, cross_attention_frequency, max_length, gradient_checkpointing"]
    assert not (tmp_path / "w").exists()
