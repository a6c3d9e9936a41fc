"""The launch scripts: dist_train.sh really starts torchrun workers; the Slurm scripts build the right command."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUB = Path(__file__).with_name("dist_train_stub.py")


def run_script(name: str, *args: str, **environ: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "tools" / name), *args],
        env={**os.environ, "PYTHON": sys.executable, **environ},
        capture_output=True,
        text=True,
        timeout=120,
    )


def dry_run(name: str, *args: str, **environ: str) -> list[str]:
    result = run_script(name, *args, DRY_RUN="1", **environ)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def test_dist_train_starts_one_worker_per_process(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "config.yaml"
    result = run_script(
        "dist_train.sh",
        str(config),
        "2",
        "optim.lr=0.1",
        VFM_TRAIN_SCRIPT=str(STUB),
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for rank in range(2):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record == {"argv": [str(config), "optim.lr=0.1"], "env": [rank, rank, 2, 2, "torchrun"]}


def test_dist_train_multi_node_command():
    command = dry_run(
        "dist_train.sh", "c.yaml", "8", "a=1", NNODES="2", NODE_RANK="1", MASTER_ADDR="host0", MASTER_PORT="29555"
    )
    assert command == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--node_rank",
        "1",
        "--nproc_per_node",
        "8",
        "--master_addr",
        "host0",
        "--master_port",
        "29555",
        str(REPO / "tools" / "train.py"),
        "c.yaml",
        "a=1",
    ]


@pytest.mark.parametrize(
    ("script", "args"),
    [("dist_train.sh", ["c.yaml"]), ("dist_train.sh", ["c.yaml", "two"]), ("slurm_train.sh", ["p", "job", "c.yaml"])],
)
def test_bad_arguments_exit_2(script, args):
    result = run_script(script, *args)
    assert result.returncode == 2 and ("usage" in result.stderr or "GPUS must be" in result.stderr)


def test_slurm_train_command():
    command = dry_run(
        "slurm_train.sh", "gpu", "vit", "c.yaml", "work_dirs/vit", "a=1", GPUS="16", SRUN_ARGS="--qos=high --exclusive"
    )
    assert command == [
        "srun",
        "--partition=gpu",
        "--job-name=vit",
        "--ntasks=16",
        "--ntasks-per-node=8",
        "--cpus-per-task=5",
        "--gres=gpu:8",
        "--kill-on-bad-exit=1",
        "--signal=USR1@120",
        "--qos=high",
        "--exclusive",
        sys.executable,
        "-u",
        str(REPO / "tools" / "train.py"),
        "c.yaml",
        "work_dir=work_dirs/vit",
        "resume=auto",
        "a=1",
    ]


def test_slurm_train_on_cpus_without_gres():
    command = dry_run("slurm_train.sh", "debug", "t", "c.yaml", "w", GPUS="2", GRES="", CPUS_PER_TASK="1")
    assert "--ntasks=2" in command and "--ntasks-per-node=2" in command and "--cpus-per-task=1" in command
    assert not any(arg.startswith("--gres") for arg in command)


def test_slurm_torchrun_uses_the_first_host_and_a_job_port(tmp_path):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames node[03-04]" ] && printf "node03\\nnode04\\n"\n')
    scontrol.chmod(0o755)
    command = dry_run(
        "slurm_torchrun.sbatch",
        "c.yaml",
        "a=1",
        PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        SLURM_JOB_NODELIST="node[03-04]",
        SLURM_JOB_ID="123456",
        SLURM_NNODES="2",
        SLURM_SUBMIT_DIR=str(REPO),
        GPUS_PER_NODE="4",
    )
    assert command == [
        "srun",
        "--kill-on-bad-exit=1",
        sys.executable,
        "-u",
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc_per_node",
        "4",
        "--rdzv_id",
        "123456",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"node03:{20000 + 123456 % 20000}",
        "--signals-to-handle",  # torchrun forwards the preemption signal to its workers
        "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
        "--shutdown-timeout",
        "110",
        str(REPO / "tools" / "train.py"),
        "c.yaml",
        "resume=auto",
        "a=1",
    ]
