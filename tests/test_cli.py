"""The CLIs as a user meets them: --print-config, --dry-run, overrides, and every kind of bad input.

Each bad input must give one line on stderr starting with `error:`, exit status 2, no traceback.
"""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, run_tool

QUICKSTART = REPO / "configs" / "quickstart.yaml"


def assert_usage_error(result, *fragments: str) -> None:
    """Exit 2, one `error:` line on stderr containing every fragment, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


def test_print_config_is_resolved_and_overridden():
    result = run_tool("train", QUICKSTART, "--print-config", "optim.lr=3e-4", "train.max_steps=200",
                      "--cfg-options", "data.batch_size=8", "+objective.backbone.drop_rate=0.1", check=True)
    cfg = yaml.safe_load(result.stdout)
    assert cfg["optim"]["lr"] == 3e-4 and cfg["train"]["max_steps"] == 200 and cfg["data"]["batch_size"] == 8
    assert cfg["objective"]["backbone"]["drop_rate"] == 0.1
    assert cfg["work_dir"] == "work_dirs/quickstart"  # default: work_dirs/<config name>


def test_dry_run_builds_runs_one_step_and_writes_nothing(tmp_path):
    result = run_tool("train", QUICKSTART, "--dry-run", "data.batch_size=8", "data.train.image_size=16",
                      "data.val.image_size=16", cwd=tmp_path, check=True)
    assert "dry run: one step done" in result.stdout
    assert not (tmp_path / "work_dirs").exists()


def test_list_override_and_list_index(tmp_path):
    result = run_tool("train", QUICKSTART, "--print-config", "eval.evaluators.0.topk=[1,3]",
                      "data.train.transforms.0.degrees=5", check=True)
    cfg = yaml.safe_load(result.stdout)
    assert cfg["eval"]["evaluators"][0]["topk"] == [1, 3]
    assert cfg["data"]["train"]["transforms"][0]["degrees"] == 5


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_INPUTS = {
    "missing config": (["missing.yaml"], ["missing.yaml: config file not found"]),
    "unknown override key": ([QUICKSTART, "optim.lrr=1"], ["unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
    "malformed override": ([QUICKSTART, "optim.lr"], ["malformed override 'optim.lr'"]),
    "unparsable override value": ([QUICKSTART, "optim.betas=[0.9,"], ["override 'optim.betas=[0.9,'", "YAML syntax error"]),
    "plus on existing key": ([QUICKSTART, "+optim.lr=1"], ["already exists"]),
    "unknown registry type": ([QUICKSTART, "objective.type=clasification"],
                              ["objective.type", "unknown objectives type 'clasification'", "did you mean 'classification'"]),
    "wrong type in schema": ([QUICKSTART, "train.max_steps=abc"], ["train.max_steps", "could not be converted to Integer"]),
    "wrong type in node": ([QUICKSTART, "objective.label_smoothing=abc"], ["objective.label_smoothing: expected float"]),
    "unknown node argument": ([QUICKSTART, "+objective.backbone_name=x"], ["objective.backbone_name: unknown argument", "did you mean 'backbone'"]),
    "unknown timm model": ([QUICKSTART, "objective.backbone.name=resnet181"], ["objective.backbone.name", "did you mean 'resnet18'"]),
    "bad precision": ([QUICKSTART, "train.precision=fp8"], ["train.precision", "'fp8'"]),
    "missing dataset path": ([QUICKSTART, "data.train={type: image_folder, root: /no/such/dir}"],
                             ["data.train.root: dataset path '/no/such/dir' does not exist"]),
    "missing resume checkpoint": ([QUICKSTART, "resume=/no/such.pt"], ["resume: checkpoint '/no/such.pt' not found"]),
    "missing load_from": ([QUICKSTART, "load_from=/no/such.safetensors"], ["load_from", "not found"]),
    "bad custom import": ([QUICKSTART, "custom_imports=[no_such_plugin_module]"], ["custom_imports.0", "no_such_plugin_module"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(case, tmp_path):
    args, fragments = BAD_INPUTS[case]
    assert_usage_error(run_tool("train", *args, cwd=tmp_path if case == "missing config" else None), *fragments)


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    config = _write(tmp_path, "broken.yaml", "objective:\n  type: classification\n  num_classes: [10\noptim: {}\n")
    assert_usage_error(run_tool("train", config), f"{config}:4:", "YAML syntax error")


def test_base_cycle(tmp_path):
    _write(tmp_path, "a.yaml", "_base_: b.yaml\nseed: 1\n")
    _write(tmp_path, "b.yaml", "_base_: [a.yaml]\n")
    assert_usage_error(run_tool("train", tmp_path / "a.yaml"), "_base_ cycle", "a.yaml -> ", "b.yaml -> ")


def test_unknown_top_level_key_in_file(tmp_path):
    config = _write(tmp_path, "c.yaml", f"_base_: {QUICKSTART}\ntrian:\n  max_steps: 3\n")
    assert_usage_error(run_tool("train", config), "unknown key 'trian'", "did you mean 'train'")


def test_corrupt_checkpoint_for_resume_and_load_from(tmp_path):
    corrupt = _write(tmp_path, "corrupt.pt", "not a checkpoint at all")
    assert_usage_error(run_tool("train", QUICKSTART, f"resume={corrupt}", f"work_dir={tmp_path / 'w'}"),
                       str(corrupt), "not a readable checkpoint")
    assert_usage_error(run_tool("train", QUICKSTART, f"load_from={corrupt}", f"work_dir={tmp_path / 'w'}"),
                       str(corrupt), "not a readable checkpoint")


def test_debug_flag_shows_traceback():
    result = run_tool("train", QUICKSTART, "optim.lrr=1", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_eval_with_missing_checkpoint(tmp_path):
    assert_usage_error(run_tool("eval", QUICKSTART, tmp_path / "nope.pt"), "nope.pt: checkpoint file not found")
