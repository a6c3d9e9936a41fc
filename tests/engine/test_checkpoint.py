"""Unit tests for vfm/engine/checkpoint.py: atomic writes, keep-last-K, auto-resume, safe loading."""

from __future__ import annotations

import errno
import logging
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vfm.engine.checkpoint import (
    FORMAT,
    CheckpointManager,
    all_finite,
    atomic_torch_save,
    atomic_write,
    load_checkpoint,
    load_state_dict_file,
    load_weights,
    save_safetensors,
)
from vfm.errors import CheckpointError

EXECUTED: list[str] = []


def _record_execution(message: str) -> str:
    EXECUTED.append(message)
    return message


class Payload:
    """Unpickling this runs `_record_execution`: exactly what weights_only loading must refuse."""

    def __reduce__(self):
        return _record_execution, ("payload ran",)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def train_state(step: int) -> dict:
    return {"model": {"w": torch.full((2,), float(step))}, "step": step, "data": {"epoch": 0, "batch_in_epoch": step}}


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ------------------------------------------------------------------------------------ atomic write
def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    atomic_write(path, lambda f: f.write(b"first"))
    atomic_write(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["file.bin"]


def test_atomic_write_failure_keeps_the_previous_file(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"previous")

    def crash(file) -> None:
        file.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, crash)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["file.bin"]  # the temp file is gone


def test_atomic_torch_save_failure_keeps_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"x": torch.arange(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled; which error does not matter
        atomic_torch_save({"x": torch.arange(5), "bad": lambda: None}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


# ------------------------------------------------------------------------------ checkpoint manager
def test_save_keeps_last_k_and_moves_the_pointer(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        path = manager.save(train_state(step), step)
        assert path == tmp_path / "checkpoints" / f"step_{step:08d}.pt"
        assert (tmp_path / "last_checkpoint").read_text() == f"checkpoints/step_{step:08d}.pt"
    assert manager.step_checkpoints() == [manager.step_path(40), manager.step_path(30)]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000030.pt", "step_00000040.pt"]
    state = load_checkpoint(manager.step_path(40))
    assert state["format"] == FORMAT and state["step"] == 40
    assert torch.equal(state["model"]["w"], torch.full((2,), 40.0))


def test_best_checkpoint_is_never_pruned(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save_best(train_state(1))
    for step in (1, 2, 3):
        manager.save(train_state(step), step)
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == 1
    assert manager.step_checkpoints() == [manager.step_path(3)]


def test_step_checkpoints_sorts_numerically_and_ignores_other_files(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=10)
    assert manager.step_checkpoints() == []
    for step in (9, 100, 11):
        manager.save(train_state(step), step)
    (manager.dir / "notes.txt").write_text("x")
    (manager.dir / ".step_00000200.pt.123.tmp").write_text("a crashed write")
    assert [p.name for p in manager.step_checkpoints()] == ["step_00000100.pt", "step_00000011.pt", "step_00000009.pt"]


def test_latest_valid_skips_a_corrupt_newest_checkpoint(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        manager.save(train_state(step), step)
    truncate(manager.step_path(3))
    with caplog.at_level(logging.WARNING, logger="vfm.engine.checkpoint"):
        path, state = manager.latest_valid()
    assert path == manager.step_path(2)
    assert state["step"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "resume=auto: skipping" in warnings[0] and "step_00000003.pt" in warnings[0]


def test_latest_valid_skips_a_file_that_is_not_a_vfm_checkpoint(tmp_path, caplog):
    manager = CheckpointManager(tmp_path)
    manager.save(train_state(1), 1)
    manager.save(train_state(2), 2)
    torch.save({"weight": torch.zeros(2)}, manager.step_path(2))  # loadable, but only weights
    with caplog.at_level(logging.WARNING, logger="vfm.engine.checkpoint"):
        path, state = manager.latest_valid()
    assert (path, state["step"]) == (manager.step_path(1), 1)
    assert "step_00000002.pt: not a vfm training checkpoint" in caplog.text


def test_latest_valid_follows_the_pointer_then_falls_back(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last=5)
    for step in (1, 2):
        manager.save(train_state(step), step)
    # the pointer names an older checkpoint (e.g. a newer file was copied in by hand): it wins
    (tmp_path / "last_checkpoint").write_text("checkpoints/step_00000001.pt")
    assert manager.latest_valid()[1]["step"] == 1
    # a pointer to a file that is gone: fall back to the newest step file, with a warning
    (tmp_path / "last_checkpoint").write_text("checkpoints/step_00000099.pt")
    with caplog.at_level(logging.WARNING, logger="vfm.engine.checkpoint"):
        assert manager.latest_valid()[1]["step"] == 2
    assert any("step_00000099.pt" in r.getMessage() for r in caplog.records)


def test_latest_valid_none_when_everything_is_corrupt(tmp_path, caplog):
    manager = CheckpointManager(tmp_path)
    assert manager.latest_valid() is None
    manager.save(train_state(1), 1)
    truncate(manager.step_path(1), keep=0.1)
    with caplog.at_level(logging.WARNING, logger="vfm.engine.checkpoint"):
        assert manager.latest_valid() is None
    assert len(caplog.records) == 1


def test_resolve_resume(tmp_path):
    work = tmp_path / "run"
    manager = CheckpointManager(work, keep_last=3)
    assert manager.resolve_resume(None) is None
    assert manager.resolve_resume("") is None
    assert manager.resolve_resume("auto") is None  # nothing yet: start from scratch
    for step in (5, 6):
        manager.save(train_state(step), step)

    path, state = manager.resolve_resume("auto")
    assert (path, state["step"]) == (manager.step_path(6), 6)
    path, state = manager.resolve_resume(str(manager.step_path(5)))  # an explicit (older) file
    assert (path, state["step"]) == (manager.step_path(5), 5)
    other = CheckpointManager(tmp_path / "elsewhere")
    path, state = other.resolve_resume(str(work))  # another run's work dir
    assert (path, state["step"]) == (manager.step_path(6), 6)

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"resume=.*empty: no valid checkpoint"):
        manager.resolve_resume(str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint file not found"):
        manager.resolve_resume(str(tmp_path / "missing.pt"))


def test_resolve_resume_explicit_corrupt_file_is_an_error(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = manager.save(train_state(1), 1)
    truncate(path)
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint"):
        manager.resolve_resume(str(path))


# ---------------------------------------------------------------------------------- safe loading
def test_load_checkpoint_rejects_files_that_are_not_vfm_checkpoints(tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save(make_model().state_dict(), plain)
    with pytest.raises(CheckpointError, match=r"weights\.pt: not a vfm training checkpoint .*use load_from"):
        load_checkpoint(plain)
    tagged = tmp_path / "tagged.pt"
    torch.save({"format": FORMAT, "model": {}}, tagged)  # no step
    with pytest.raises(CheckpointError, match=r"not a vfm training checkpoint"):
        load_checkpoint(tagged)


def test_load_state_dict_file_reads_safetensors_and_torch_files(tmp_path):
    weights = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    save_file(weights, str(tmp_path / "w.safetensors"))
    torch.save(weights, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = load_state_dict_file(tmp_path / name)
        assert loaded.keys() == weights.keys()
        for key, value in weights.items():
            assert torch.equal(loaded[key], value)


def test_load_state_dict_file_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, path)
    EXECUTED.clear()
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: loading it would call \S*_record_execution") as refused:
        load_state_dict_file(path)
    assert "weights_only" not in str(refused.value) and "corrupt" not in str(refused.value)
    assert EXECUTED == []  # nothing in the file ran
    # the same file is a working exploit for a plain pickle load: the check is not vacuous
    torch.load(path, weights_only=False)
    assert EXECUTED == ["payload ran"]
    EXECUTED.clear()


def test_load_state_dict_file_rejects_missing_truncated_and_non_mapping_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint file not found"):
        load_state_dict_file(tmp_path / "nope.pt")
    path = tmp_path / "cut.pt"
    torch.save({"a": torch.randn(100)}, path)
    truncate(path)
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable checkpoint \(corrupt or truncated\?\)"):
        load_state_dict_file(path)
    (tmp_path / "text.pt").write_text("not a checkpoint at all")  # torch's message suggests weights_only=False
    with pytest.raises(CheckpointError, match=r"text\.pt: not a readable checkpoint .*: Unsupported operand") as garbage:
        load_state_dict_file(tmp_path / "text.pt")
    assert "weights_only" not in str(garbage.value)
    (tmp_path / "cut.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint"):
        load_state_dict_file(tmp_path / "cut.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: expected a mapping of tensors, got list"):
        load_state_dict_file(tmp_path / "list.pt")


def test_load_weights_reports_missing_and_unexpected_keys(tmp_path, caplog):
    source = make_model()
    weights = dict(source.state_dict())
    del weights["2.bias"]
    weights["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": weights}, path)  # a wrapped state dict, as many repos write them

    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    bias_before = target[2].bias.detach().clone()
    with caplog.at_level(logging.WARNING, logger="vfm.engine.checkpoint"):
        missing, unexpected = load_weights(target, path)
    assert missing == ["2.bias"]
    assert unexpected == ["extra.weight"]
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[1].running_mean, source[1].running_mean)
    assert torch.equal(target[2].bias, bias_before)  # untouched
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "1 missing keys: 2.bias" in messages and "1 unexpected keys: extra.weight" in messages


def test_load_weights_from_vfm_checkpoint_prefers_ema_when_asked(tmp_path):
    model, ema = make_model(), make_model()
    with torch.no_grad():
        ema[0].weight.fill_(7.0)
    manager = CheckpointManager(tmp_path)
    path = manager.save({"model": model.state_dict(), "ema": ema.state_dict(), "step": 1}, 1)
    target = make_model()
    assert load_weights(target, path, prefer_ema=True) == ([], [])
    assert torch.all(target[0].weight == 7.0)
    load_weights(target, path)
    assert torch.equal(target[0].weight, model[0].weight)


def test_load_weights_rejects_shape_mismatch_and_foreign_files(tmp_path):
    torch.save({"0.weight": torch.zeros(5, 3), "0.bias": torch.zeros(5)}, tmp_path / "wide.pt")
    target = make_model()
    before = target[0].weight.detach().clone()
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatch for 0\.weight: \(5, 3\) in file, \(4, 3\) in model \(2 mismatched keys\)",
    ):
        load_weights(target, tmp_path / "wide.pt")
    assert torch.equal(target[0].weight, before)  # nothing was loaded
    torch.save({"encoder.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"none of its 1 keys match the model \(e\.g\. 'encoder\.weight'\)"):
        load_weights(target, tmp_path / "foreign.pt")


def test_save_safetensors_round_trip(tmp_path):
    tied = nn.Linear(3, 3)
    weights = {"a.weight": tied.weight, "b.weight": tied.weight, "bias": tied.bias, "steps": torch.tensor([3])}
    path = save_safetensors(weights, tmp_path / "model.safetensors")  # shared storage is allowed
    loaded = load_state_dict_file(path)
    assert loaded.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(loaded[key], value.detach())
        assert loaded[key].dtype == value.dtype
    with safe_open(str(path), framework="pt") as file:
        assert file.metadata() == {"format": "pt", "producer": "vfm"}
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_all_finite():
    model = make_model()
    assert all_finite(model)
    model[1].num_batches_tracked.fill_(2**40)  # integer buffers are not checked
    assert all_finite(model)
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    assert not all_finite(model)
    model = make_model()
    model[1].running_var[1] = float("inf")  # floating buffers are checked too
    assert not all_finite(model)


# --------------------------------------------------------------------- runs sharing a folder, temp files
def test_prune_never_counts_another_runs_checkpoints(tmp_path):
    old = CheckpointManager(tmp_path, keep_last=2, run_id="old")
    for step in (10, 20, 30):
        old.save(train_state(step), step)
    new = CheckpointManager(tmp_path, keep_last=2, run_id="new")
    for step in (4, 8, 12):
        new.save(train_state(step), step)
        assert new.step_path(step).is_file()  # what was just written survives its own save
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    # The old run's two newest are untouched; the new run kept its own two newest (4 was its oldest).
    assert names == ["step_00000008.pt", "step_00000012.pt", "step_00000020.pt", "step_00000030.pt"]
    assert load_checkpoint(new.step_path(12))["run_id"] == "new"
    assert load_checkpoint(old.step_path(30))["run_id"] == "old"


def test_prune_ignores_corrupt_checkpoints(tmp_path):
    old = CheckpointManager(tmp_path, keep_last=5, run_id="old")
    for step in (10, 20, 30):
        truncate(old.save(train_state(step), step), keep=0.2)
    new = CheckpointManager(tmp_path, keep_last=1, run_id="new")
    new.save(train_state(2), 2)
    assert new.step_path(2).is_file()  # corrupt step 10..30 do not outrank it
    new.save(train_state(4), 4)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000004.pt", "step_00000010.pt", "step_00000020.pt", "step_00000030.pt"]


def test_prune_after_a_rewind_drops_the_abandoned_branch_first(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, run_id="run")
    for step in (2, 4, 6, 8):
        manager.save(train_state(step), step)
    resumed = CheckpointManager(tmp_path, keep_last=2, run_id="run")  # resume=checkpoints/step_00000006.pt
    resumed.save(train_state(7), 7)
    assert [p.name for p in resumed.step_checkpoints()] == ["step_00000007.pt", "step_00000006.pt"]


def test_foreign_and_existing_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path, run_id="a")
    assert manager.existing_checkpoints() == []
    manager.save(train_state(1), 1)
    CheckpointManager(tmp_path, run_id="b").save(train_state(2), 2)
    truncate(manager.save(train_state(3), 3))
    manager.save_best(train_state(1))
    assert [p.name for p in manager.foreign_checkpoints("a")] == ["step_00000002.pt"]  # the corrupt one is nobody's
    assert [p.name for p in manager.existing_checkpoints()] == [
        "step_00000003.pt", "step_00000002.pt", "step_00000001.pt", "best.pt", "last_checkpoint"]
    assert manager.delete_all() == 5 and manager.existing_checkpoints() == []


def test_remove_stale_temp_files(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(train_state(1), 1)
    dead_pid = 2**22 + 12345  # above Linux's pid_max: no such process
    stale = [manager.dir / f".step_00000002.pt.{dead_pid}.tmp", tmp_path / f".last_checkpoint.{dead_pid}.tmp",
             tmp_path / f".model.safetensors.{dead_pid}.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (manager.dir / ".step_00000004.tmp").mkdir()  # a sharded strategy's unfinished folder
    (manager.dir / ".step_00000004.tmp" / "shard_0.pt").write_bytes(b"x")
    in_flight = manager.dir / f".step_00000003.pt.{os.getppid()}.tmp"  # a live process's write is left alone
    in_flight.write_bytes(b"being written")
    (manager.dir / "notes.tmp").write_text("not ours")
    removed = manager.remove_stale_temp_files()
    assert sorted(p.name for p in removed) == sorted([p.name for p in stale] + [".step_00000004.tmp"])
    assert sorted(p.name for p in manager.dir.iterdir()) == [in_flight.name, "notes.tmp", "step_00000001.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "last_checkpoint"]
    assert load_checkpoint(manager.step_path(1))["step"] == 1


def test_write_failure_names_the_folder_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, run_id="run")
    manager.save(train_state(1), 1)

    def disk_full(obj, file) -> None:
        file.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"checkpoints: cannot write step_00000002\.pt: No space left on device"):
        manager.save(train_state(2), 2)
    monkeypatch.undo()
    assert sorted(p.name for p in manager.dir.iterdir()) == ["step_00000001.pt"]  # no temp file left behind
    assert manager.latest_valid()[1]["step"] == 1


def test_write_into_a_folder_that_cannot_exist_is_one_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CheckpointError, match=r"a_file/checkpoints: cannot write step_00000001\.pt: "):
        CheckpointManager(tmp_path / "a_file").save(train_state(1), 1)


def test_load_weights_takes_a_0d_value_for_a_one_element_parameter(tmp_path):
    # Files written when a temperature was a 0-d parameter load into the 1-element one FSDP2 needs.
    model = nn.Linear(2, 1)
    model.scale = nn.Parameter(torch.zeros(1))
    path = tmp_path / "old.safetensors"
    save_file({"weight": torch.ones(1, 2), "bias": torch.tensor([0.5]), "scale": torch.tensor(2.5)}, str(path))
    assert load_weights(model, path) == ([], [])
    assert model.scale.shape == (1,) and model.scale.item() == 2.5
    save_file({"weight": torch.ones(2, 1), "bias": torch.tensor([0.5]), "scale": torch.tensor(2.5)}, str(path))
    with pytest.raises(CheckpointError, match="shape mismatch for weight"):  # a real mismatch still is one
        load_weights(model, path)
