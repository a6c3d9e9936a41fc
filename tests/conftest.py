"""Shared helpers: run vfm's CLIs as subprocesses, exactly as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread per process, in the test process and in every tool it starts (they inherit the environment).
# `make test` runs two pytest-xdist workers on two cores, and the distributed tests start two ranks more: with
# OpenMP's default of one thread per core, threads spin-wait on busy cores and a tiny training run costs 4x the CPU.
# (tests/task_arithmetic/ta_helpers.py set this at import, so a full run already had it; now a subset has it too.)
# A test that needs several threads sets them itself (tests/ops/test_ms_deform_attn_cpu.py).
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)  # torch is loaded already, and OpenMP read the environment when it was
sys.path.insert(0, str(REPO / "tests" / "plugins"))  # so in-process runs can import the test plug-ins

# Tests that start several processes that each want a core (torchrun/DeepSpeed/FSDP ranks, the Slurm daemons and
# jobs) form one pytest-xdist work unit: under `--dist loadgroup` (`make test`) they run one after another on one
# worker while the other workers take the single-process tests one by one. Two 2-rank runs at once on two cores
# would oversubscribe them, and one unit keeps each module's expensive module-scoped fixture (the training runs of
# test_strategies.py and test_detection_end_to_end.py, the Slurm cluster) on a single worker, so it runs once.
# This is a scheduler, not `xdist_group` marks: pytest 9.2's structured node ids drop the "@group" suffix that
# pytest-xdist 3.8 appends to mark a group, so marked tests would silently be spread out (pytest-xdist #1386).
MULTIPROCESS_GROUP = "multiprocess"
MULTIPROCESS_TESTS = (
    "tests/distributed/",
    "tests/engine/test_strategies.py",
    "tests/test_detection_end_to_end.py",
    "tests/theory/privacy/test_dp_linear_probe_ddp.py",
)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: without the plug-in, pytest never calls it
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class MultiprocessGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)  # an explicit xdist_group mark, where xdist can still add it
            if scope == nodeid and nodeid.split("::", 1)[0].startswith(MULTIPROCESS_TESTS):
                return MULTIPROCESS_GROUP
            return scope

    return MultiprocessGroupScheduling(config, log)


def run_tool(tool: str, *args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run `tools/<tool>.py args...` with the test plug-ins importable; returns the finished process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "plugins"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / f"{tool}.py"), *map(str, args)],
        cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} {args} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def tiny_config() -> Path:
    """The seconds-long end-to-end config."""
    return TINY


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory) -> str:
    """A word-level tokenizer folder of the captioned-shapes grammar (what make_shapes_captions writes)."""
    from vfm.data.shapes_captions import grammar_texts
    from vfm.data.word_tokenizer import train_word_tokenizer

    return str(train_word_tokenizer(grammar_texts(), tmp_path_factory.mktemp("tokenizer")))
