"""Shared helpers: run vfm's CLIs as subprocesses, exactly as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPO / "tests" / "plugins"))  # so in-process runs can import the test plug-ins


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
