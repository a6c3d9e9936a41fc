"""Unit tests for vfm/engine/validation.py: the work dir check (fresh runs, resumes from elsewhere, overwrite)."""

from __future__ import annotations

import pytest
import torch

from conftest import REPO
from vfm.config import load_config
from vfm.engine.checkpoint import CheckpointManager
from vfm.engine.run_config import RunConfig
from vfm.engine.validation import check_device, validate_work_dir
from vfm.errors import ConfigError

CONTRACTS = REPO / "tests" / "configs" / "contracts.yaml"


def cfg_for(work, *overrides):
    return load_config(CONTRACTS, [f"work_dir={work}", *overrides], RunConfig)


def test_fresh_run_needs_an_empty_work_dir_or_overwrite(tmp_path):
    work = tmp_path / "run"
    validate_work_dir(cfg_for(work), work)  # nothing there yet
    CheckpointManager(work, run_id="a").save({"model": {}, "step": 1}, 1)
    with pytest.raises(ConfigError, match=r"work_dir: '.*run' holds another run's checkpoints \(checkpoints/step_00000001"
                                          r"\.pt, last_checkpoint\); expected resume=auto"):
        validate_work_dir(cfg_for(work), work)
    validate_work_dir(cfg_for(work, "resume=auto"), work)
    validate_work_dir(cfg_for(work, "checkpoint.overwrite=true"), work)
    with pytest.raises(ConfigError, match=r"checkpoint.overwrite: got True, expected false when resuming"):
        validate_work_dir(cfg_for(work, "checkpoint.overwrite=true", "resume=auto"), work)


def test_resume_from_elsewhere_into_a_dir_of_another_run_is_refused(tmp_path):
    source = CheckpointManager(tmp_path / "source", run_id="a")
    path = source.save({"model": {}, "step": 2}, 2)
    target = tmp_path / "target"
    validate_work_dir(cfg_for(target, f"resume={path}"), target)  # an empty target is fine
    CheckpointManager(target, run_id="a").save({"model": {}, "step": 4}, 4)  # the same run continued there
    validate_work_dir(cfg_for(target, f"resume={path}"), target)
    CheckpointManager(target, run_id="b").save({"model": {}, "step": 6}, 6)
    with pytest.raises(ConfigError, match=r"holds checkpoints of another run than resume=.*\(step_00000006\.pt\)"):
        validate_work_dir(cfg_for(target, f"resume={path}"), target)


def test_check_device():
    check_device("auto", "train.device")
    check_device("cpu", "train.device")
    with pytest.raises(ConfigError, match=r"train.device: got 'tpu0', expected auto, cpu, cuda"):
        check_device("tpu0", "train.device")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"got 'cuda', expected auto or cpu: no CUDA GPU is visible"):
            check_device("cuda", "train.device")
    else:
        check_device("cuda:0", "train.device")
