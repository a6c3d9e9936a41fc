"""Bad inputs through the real CLIs: each is exit status 2, exactly one stderr line naming the culprit, and nothing
written to the work dir.

The table runs through `vfm.cli.train_main` / `eval_main`, the functions tools/train.py and tools/eval.py call, in
this process (one torch import for the whole table); a few rows also run as real subprocesses, as a user runs them.
"""

from __future__ import annotations

import pytest
import torch

from conftest import REPO, run_tool
from vfm.cli import eval_main, train_main
from vfm.engine.checkpoint import CheckpointManager

CONTRACTS = REPO / "tests" / "configs" / "contracts.yaml"
TINY = REPO / "tests" / "configs" / "tiny.yaml"


class Payload:
    """Unpickling this would call `print`: what loading a checkpoint must refuse."""

    def __reduce__(self):
        return print, ("payload ran",)


@pytest.fixture
def files(tmp_path):
    """The files the table refers to as {name}."""
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "latin1.yaml").write_bytes(f"_base_: {CONTRACTS}\nseed: 1  # caf\xe9\n".encode("latin-1"))
    (tmp_path / "dup_top.yaml").write_text(f"_base_: {CONTRACTS}\nseed: 1\ndeterministic: false\nseed: 2\n")
    (tmp_path / "dup_nested.yaml").write_text(f"_base_: {CONTRACTS}\noptim:\n  lr: 0.1\n  momentum: 0.5\n  lr: 0.2\n")
    (tmp_path / "broken.yaml").write_text(f"_base_: {CONTRACTS}\ntrain: {{max_steps: 3\n")
    (tmp_path / "eval.yaml").write_text(f"_base_: {CONTRACTS}\ndata:\n  val: {{type: test_records, size: 16}}\n"
                                        "eval:\n  evaluators: [{type: test_mse}]\n")
    (tmp_path / "garbage.pt").write_text("not a checkpoint at all")
    other = CheckpointManager(tmp_path / "other_run", run_id="other")  # a checkpoint of another model
    other.save({"model": {"net.weight": torch.zeros(3, 4), "net.bias": torch.zeros(3), "head.weight": torch.zeros(1)},
                "optimizer": {}, "step": 2, "data": [{}], "rng": [{}]}, 2)
    torch.save({"net.weight": torch.zeros(2, 4), "payload": Payload()}, tmp_path / "evil.pt")
    CheckpointManager(tmp_path / "occupied", run_id="earlier").save({"model": {}, "step": 4}, 4)
    return {"tmp": tmp_path, "work": tmp_path / "work", "contracts": CONTRACTS, "tiny": TINY,
            "other": other.step_path(2), "occupied": tmp_path / "occupied"}


NO_GPU = not torch.cuda.is_available()
T = "train"
E = "eval"
# (tool, arguments, fragments the one stderr line must contain). Train rows get work_dir={work} unless they set one.
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    # the command line itself
    "train without arguments": (T, [], ["train.py: missing argument: config"]),
    "unknown flag": (T, ["{contracts}", "--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    "empty --cfg-options": (T, ["{contracts}", "--cfg-options"], ["--cfg-options", "expected at least one argument"]),
    "eval without checkpoint": (E, ["{tmp}/eval.yaml"], ["eval.py: missing argument: checkpoint"]),
    "eval bad --weights": (E, ["{tmp}/eval.yaml", "{other}", "--weights", "best"], ["--weights", "invalid choice: 'best'"]),
    # config files and overrides
    "missing config": (T, ["{tmp}/nope.yaml"], ["nope.yaml: config file not found"]),
    "config not UTF-8": (T, ["{tmp}/latin1.yaml"], ["latin1.yaml:2: not UTF-8", "0xe9"]),
    "duplicate top-level key": (T, ["{tmp}/dup_top.yaml"], ["dup_top.yaml:4:", "duplicate key 'seed'", "line 2"]),
    "duplicate nested key": (T, ["{tmp}/dup_nested.yaml"], ["dup_nested.yaml:5:", "duplicate key 'lr'"]),
    "YAML syntax error": (T, ["{tmp}/broken.yaml"], ["broken.yaml:", "YAML syntax error"]),
    "unknown override key": (T, ["{contracts}", "optim.lrr=1"], ["unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
    "malformed override": (T, ["{contracts}", "optim.lr"], ["malformed override 'optim.lr'"]),
    "unknown registry type": (T, ["{contracts}", "objective.type=test_linaer"], ["objective.type", "did you mean 'test_linear'"]),
    # optimizer and schedule
    "zero lr": (T, ["{contracts}", "optim.lr=0"], ["optim.lr: got 0", "positive learning rate"]),
    "negative lr": (T, ["{contracts}", "optim.lr=-1e-3"], ["optim.lr: got -0.001", "positive learning rate"]),
    "negative adamw lr": (T, ["{contracts}", "optim={type: adamw, lr: -1.0}"], ["optim.lr: got -1.0"]),
    "adamw beta >= 1": (T, ["{contracts}", "optim={type: adamw, lr: 0.1, betas: [0.9, 1.5]}"], ["optim.betas", "[0, 1)"]),
    "negative weight decay": (T, ["{contracts}", "optim.weight_decay=-0.1"], ["optim.weight_decay: got -0.1", ">= 0"]),
    "negative momentum": (T, ["{contracts}", "optim.momentum=-0.5"], ["optim.momentum: got -0.5"]),
    "infinite lr": (T, ["{contracts}", "optim.lr=.inf"], ["optim.lr: got inf", "positive learning rate"]),
    "NaN lr": (T, ["{contracts}", "optim.lr=.nan"], ["optim.lr: got nan"]),
    "negative milestone": (T, ["{contracts}", "scheduler={type: step, milestones: [-5]}"], ["scheduler.milestones: got [-5]"]),
    "negative warmup": (T, ["{contracts}", "scheduler={type: cosine, warmup_steps: -1}"], ["scheduler.warmup_steps: got -1"]),
    "lr floor above 1": (T, ["{contracts}", "scheduler={type: cosine, min_lr_ratio: 2.0}"], ["scheduler.min_lr_ratio: got 2.0"]),
    # the loop's intervals and counts
    "zero log interval": (T, ["{contracts}", "train.log_interval=0"], ["train.log_interval: got 0", ">= 1"]),
    "negative checkpoint interval": (T, ["{contracts}", "checkpoint.interval=-1"], ["checkpoint.interval: got -1"]),
    "negative eval interval": (T, ["{contracts}", "eval.interval=-5"], ["eval.interval: got -5"]),
    "zero max_skipped_steps": (T, ["{contracts}", "train.max_skipped_steps=0"], ["train.max_skipped_steps: got 0"]),
    "zero max_steps": (T, ["{contracts}", "train.max_steps=0"], ["train.max_steps: got 0"]),
    "zero grad accumulation": (T, ["{contracts}", "train.grad_accum_steps=0"], ["train.grad_accum_steps: got 0"]),
    "zero keep_last": (T, ["{contracts}", "checkpoint.keep_last=0"], ["checkpoint.keep_last: got 0"]),
    "zero timeout": (T, ["{contracts}", "dist.timeout_s=0"], ["dist.timeout_s: got 0"]),
    # data
    "negative workers": (T, ["{contracts}", "data.num_workers=-1"], ["data.num_workers: got -1", ">= 0"]),
    "zero batch size": (T, ["{contracts}", "data.batch_size=0"], ["data.batch_size: got 0"]),
    "zero image size": (T, ["{tiny}", "data.train.image_size=0"], ["data.train.image_size: got 0"]),
    "sample rate above 1": (T, ["{contracts}", "data.sampler={type: poisson, sample_rate: 2.0}"], ["data.sampler.sample_rate: got 2.0"]),
    "unknown dataset argument": (T, ["{contracts}", "+data.train.bogus=1"], ["data.train.bogus: unknown argument 'bogus'"]),
    "zero eval batch size": (T, ["{tiny}", "data.val_batch_size=0"], ["data.val_batch_size: got 0", ">= 1"]),
    "zero input channels": (T, ["{tiny}", "objective.backbone.in_chans=0"], ["objective.backbone.in_chans: got 0", ">= 1"]),
    # devices
    "device gpu": (T, ["{contracts}", "train.device=gpu"], ["train.device: got 'gpu'", "auto, cpu, cuda"]),
    "device cuda:x": (T, ["{contracts}", "train.device=cuda:x"], ["train.device: got 'cuda:x'"]),
    "empty device": (T, ["{contracts}", "train.device=''"], ["train.device: got ''"]),
    "device cuda:99": (T, ["{contracts}", "train.device=cuda:99"], ["train.device: got 'cuda:99'"]),
    "device cuda without GPU": (T, ["{contracts}", "train.device=cuda"], ["train.device: got 'cuda'", "no CUDA GPU"]),
    # objective, clipping, EMA, evaluation
    "label smoothing 1": (T, ["{tiny}", "objective.label_smoothing=1.0"], ["objective.label_smoothing: got 1.0", "[0, 1)"]),
    "negative label smoothing": (T, ["{tiny}", "objective.label_smoothing=-0.1"], ["objective.label_smoothing: got -0.1"]),
    "zero classes": (T, ["{tiny}", "objective.num_classes=0"], ["objective.num_classes: got 0"]),
    "negative clip norm": (T, ["{contracts}", "train.clip_grad_norm=-1.0"], ["train.clip_grad_norm: got -1.0", "positive"]),
    "zero clip norm": (T, ["{contracts}", "train.clip_grad_norm=0"], ["train.clip_grad_norm: got 0"]),
    "NaN clip norm": (T, ["{contracts}", "train.clip_grad_norm=.nan"], ["train.clip_grad_norm: got nan"]),
    "top-0 accuracy": (T, ["{tiny}", "eval.evaluators=[{type: accuracy, topk: [0]}]"], ["eval.evaluators.0.topk: got [0]"]),
    "EMA decay 1": (T, ["{tiny}", "ema.decay=1.0"], ["ema.decay: got 1.0", "(0, 1)"]),
    "EMA decay 0": (T, ["{tiny}", "ema.decay=0.0"], ["ema.decay: got 0.0"]),
    "EMA decay above 1": (T, ["{tiny}", "ema.decay=1.5"], ["ema.decay: got 1.5"]),
    "metric no evaluator produces": (T, ["{tiny}", "eval.metric=acuracy"], ["eval.metric: got 'acuracy'", "accuracy, top5_accuracy"]),
    "metric of another k": (T, ["{tiny}", "eval.metric=top3_accuracy"], ["eval.metric: got 'top3_accuracy'"]),
    "bad eval mode": (T, ["{tiny}", "eval.mode=maximize"], ["eval.mode: got 'maximize'"]),
    # work dir and checkpoints
    "work dir is a file": (T, ["{contracts}", "work_dir={tmp}/a_file"], ["work_dir: got", "a_file", "it is a file"]),
    "work dir below a file": (T, ["{contracts}", "work_dir={tmp}/a_file/run"], ["work_dir: got", "a_file is a file"]),
    "work dir not writable": (T, ["{contracts}", "work_dir=/sys/vfm_bad_input_run"], ["work_dir: got", "writable folder"]),
    "work dir of another run": (T, ["{contracts}", "work_dir={occupied}"],
                                ["{occupied}", "resume=auto", "new work_dir", "checkpoint.overwrite=true"]),
    "overwrite while resuming": (T, ["{contracts}", "checkpoint.overwrite=true", "resume=auto"], ["checkpoint.overwrite"]),
    "resume folder without checkpoints": (T, ["{contracts}", "resume={tmp}"], ["no valid checkpoint in that folder"]),
    "missing resume file": (T, ["{contracts}", "resume={tmp}/none.pt"], ["resume: checkpoint", "none.pt", "not found"]),
    "garbage resume file": (T, ["{contracts}", "resume={tmp}/garbage.pt"], ["garbage.pt: not a readable checkpoint"]),
    "resume another model": (T, ["{contracts}", "resume={other}"],
                             ["another model", "shape of net.weight: (3, 4) in file, (2, 4)", "missing tower.0.weight"]),
    "resume refused pickle": (T, ["{contracts}", "resume={tmp}/evil.pt"], ["evil.pt: refused", "would call print"]),
    "load_from refused pickle": (T, ["{contracts}", "load_from={tmp}/evil.pt"], ["evil.pt: refused", "would call print"]),
    "missing load_from": (T, ["{contracts}", "load_from={tmp}/none.safetensors"], ["load_from", "not found"]),
    # errors inside DataLoader workers (these come after the run started, so config.yaml may be written)
    "DataError in a worker": (T, ["{contracts}", "data.train={type: test_failing_records}", "data.num_workers=1"],
                              ["test_failing_records: record", "is unreadable"]),
    "bug in a worker": (T, ["{contracts}", "data.train={type: test_failing_records, kind: bug}", "data.num_workers=1"],
                        ["DataLoader worker process 0: ValueError: record", "a bug in the dataset"]),
    # tools/eval.py
    "eval another model": (E, ["{tmp}/eval.yaml", "{other}"], ["not a checkpoint of this config's model", "net.weight"]),
    "eval refused pickle": (E, ["{tmp}/eval.yaml", "{tmp}/evil.pt"], ["evil.pt: refused", "would call print"]),
    "eval missing checkpoint": (E, ["{tmp}/eval.yaml", "{tmp}/none.pt"], ["none.pt: checkpoint file not found"]),
    "eval --out below a file": (E, ["{tmp}/eval.yaml", "{other}", "--out", "{tmp}/a_file/m.json"], ["--out: got", "a_file", "it is a file"]),
    "eval --out is a folder": (E, ["{tmp}/eval.yaml", "{other}", "--out", "{tmp}"], ["--out: got", "expected a file name"]),
    "eval unknown set": (E, ["{tmp}/eval.yaml", "{other}", "--set", "nosuch"], ["--set nosuch: no such evaluation set"]),
}
WRITES_ALLOWED = {"DataError in a worker", "bug in a worker"}
SKIP = {"device cuda without GPU": not NO_GPU}
SUBPROCESS_ROWS = ["train without arguments", "duplicate nested key", "resume refused pickle", "bug in a worker"]


def _expand(items: list[str], files: dict) -> list[str]:
    expanded = []
    for item in items:  # not str.format: overrides hold YAML braces
        for key, value in files.items():
            item = item.replace(f"{{{key}}}", str(value))
        expanded.append(item)
    return expanded


def _argv(case: str, files: dict) -> tuple[str, list[str], list[str]]:
    tool, args, fragments = CASES[case]
    argv = _expand(args, files)
    if tool == T and argv and argv[0].endswith(".yaml") and not any(a.startswith("work_dir=") for a in argv):
        argv.insert(1, f"work_dir={files['work']}")  # before any flag, which would take it as its value
    return tool, argv, _expand(fragments, files)


def _snapshot(folder):
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*")) if folder.exists() else None


def _check(case: str, code: int, stderr: str, fragments: list[str], files: dict, before: dict) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, (case, code, stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, lines)
    for fragment in fragments:
        assert fragment in lines[0], (case, fragment, lines[0])
    message = lines[0].split("; usage:")[0]  # argparse rows end with the usage, which names key=value
    refused = any("refused" in fragment for fragment in fragments)
    for word in ("Traceback", "weights_only", "key=value", *(["corrupt"] if refused else [])):
        assert word not in message, (case, word, message)
    if case not in WRITES_ALLOWED:
        assert not files["work"].exists(), (case, sorted(files["work"].rglob("*")))
        assert {k: _snapshot(files[k]) for k in before} == before, case  # the other folders are untouched too


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, files, capsys, monkeypatch):
    if SKIP.get(case):
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(files["tmp"])
    tool, argv, fragments = _argv(case, files)
    before = {k: _snapshot(files[k]) for k in ("occupied",)}
    capsys.readouterr()
    try:
        code = (train_main if tool == T else eval_main)(argv)
    except SystemExit as exit_:  # argparse exits
        code = exit_.code
    _check(case, code, capsys.readouterr().err, fragments, files, before)


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_ROWS)
def test_bad_input_as_a_user_runs_it(case, files):
    tool, argv, fragments = _argv(case, files)
    before = {k: _snapshot(files[k]) for k in ("occupied",)}
    result = run_tool(tool, *argv, cwd=files["tmp"])
    _check(case, result.returncode, result.stderr, fragments, files, before)


def test_the_table_is_big_enough():
    assert len(CASES) >= 40
