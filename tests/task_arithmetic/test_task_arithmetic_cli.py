"""tools/task_arithmetic.py: params without training, one-line errors with exit status 2, and the whole chain
train -> build -> add / negate / disentangle -> report on a tiny ViT."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import yaml
from ta_helpers import REPO, finetune_config, pretrained_file  # noqa: F401 - fixtures

_spec = importlib.util.spec_from_file_location("task_arithmetic_tool", REPO / "tools" / "task_arithmetic.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def test_params_counts_the_paper_selection_without_training(capsys):
    assert tool.main(["params", str(REPO / "configs" / "task_arithmetic" / "finetune_vit_b32.yaml"),
                      "objective.finetune.mode=attn_only"]) == 0
    out = capsys.readouterr().out
    assert "mode attn_only trains rule attn_linear" in out
    row = next(line for line in out.splitlines() if line.startswith("attn_linear "))
    assert row.split()[1:3] == ["24", "28,311,552"] and "32.37%" in row


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys, pretrained_file):  # noqa: F811
    assert tool.main(["build", "--pretrained", str(tmp_path / "nope.safetensors"), "--finetuned", str(pretrained_file),
                      "--out", str(tmp_path / "v"), "--mode", "standard"]) == 2
    assert "nope.safetensors: checkpoint file not found" in capsys.readouterr().err
    assert tool.main(["build", "--pretrained", str(pretrained_file), "--finetuned", str(pretrained_file),
                      "--out", str(tmp_path / "v")]) == 2
    assert "records the fine-tuning mode; pass --mode" in capsys.readouterr().err
    assert tool.main(["build", "--pretrained", str(pretrained_file), "--finetuned", str(tmp_path / "gone.safetensors"),
                      "--out", str(tmp_path / "v")]) == 2  # no --mode: the missing file is still what is reported
    assert "gone.safetensors: checkpoint file not found" in capsys.readouterr().err
    assert tool.main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path}: no results.json" in capsys.readouterr().err
    assert tool.main(["negate", str(REPO / "configs" / "task_arithmetic" / "finetune_digits.yaml"), "--vector",
                      str(pretrained_file), "--control", "identity"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pre.safetensors: not a task vector" in err and err.count("\n") == 1


@pytest.mark.slow
def test_train_build_add_negate_disentangle_report(tmp_path, finetune_config, capsys):  # noqa: F811
    from conftest import run_tool
    from vfm.task_arithmetic.protocol import train_run

    work = {task: tmp_path / f"{task}_attn_only" for task in ("rotated", "inverted")}
    # The spelling a user types, through tools/train.py; the second run in-process (as the reproduction does).
    run_tool("train", finetune_config, "objective.task=rotated", "objective.finetune.mode=attn_only",
             f"work_dir={work['rotated']}", "train.max_steps=3", check=True)
    train_run(finetune_config, ["objective.task=inverted", "objective.finetune.mode=attn_only", "train.max_steps=3"],
              work["inverted"])
    pretrained = yaml.safe_load(finetune_config.read_text())["objective"]["pretrained"]
    vectors = tmp_path / "vectors"
    assert tool.main(["build", "--pretrained", pretrained, "--finetuned", *(str(f / "model.safetensors") for f in work.values()),
                      "--out", str(vectors)]) == 0
    capsys.readouterr()
    files = sorted(str(p) for p in vectors.glob("*.safetensors"))
    assert [p.rsplit("/", 1)[1] for p in files] == ["inverted_attn_only.safetensors", "rotated_attn_only.safetensors"]
    from vfm.task_arithmetic import TaskVector

    vector = TaskVector.load(files[1])
    assert (vector.rule, vector.mode, vector.task) == ("attn_linear", "attn_only", "rotated") and vector.numel() == 4096
    out = tmp_path / "run"
    assert tool.main(["--json", "add", str(finetune_config), "--vectors", *files, "--alphas", "5", "--out", str(out)]) == 0
    addition = json.loads(capsys.readouterr().out)
    assert addition["alpha"] in (0.0, 0.25, 0.5, 0.75, 1.0) and set(addition["per_task"]) == {"rotated", "inverted"}
    assert tool.main(["negate", str(finetune_config), "--vector", files[1], "--control", "identity", "--alphas", "3",
                      "--threshold", "0.9", "--out", str(out)]) == 0
    assert "negate rotated (control identity, threshold 0.9)" in capsys.readouterr().out
    assert tool.main(["disentangle", str(finetune_config), "--vectors", *files, "--grid", "3", "--out", str(out)]) == 0
    assert (out / "disentanglement_attn_only_inverted_rotated.png").stat().st_size > 1000
    capsys.readouterr()
    assert tool.main(["report", str(out)]) == 0
    report = capsys.readouterr().out
    assert "| attn_only | inverted-rotated | 3x3 on [-2, 2] |" in report and "| ViT-B/32 | 90.49 / 88.95 / 89.55 |" in report
    assert sys.modules.get("vfm.task_arithmetic") is not None
