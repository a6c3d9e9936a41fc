"""read_launch_env on synthetic torchrun and Slurm environments; init_distributed fails fast on a wrong world."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from vfm.dist import DistributedError, LaunchEnv, expand_nodelist, first_host, parse_tasks_per_node, read_launch_env
from vfm.errors import VfmError

TORCHRUN = {
    "RANK": "5",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "8",
    "LOCAL_WORLD_SIZE": "4",
    "MASTER_ADDR": "host0",
    "MASTER_PORT": "29400",
    "TORCHELASTIC_RUN_ID": "run7",
}
SLURM = {
    "SLURM_JOB_ID": "123456",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "6",
    "SLURM_TASKS_PER_NODE": "2(x3)",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "gpu[07-09]",
}


def no_scontrol(command: list[str]) -> str:
    raise FileNotFoundError(command[0])


def test_no_launcher_is_a_single_process():
    assert read_launch_env({}) == LaunchEnv(0, 0, 1, 1, "127.0.0.1", 29500, "none", None)


def test_torchrun_variables():
    env = read_launch_env(TORCHRUN)
    assert env == LaunchEnv(5, 1, 8, 4, "host0", 29400, "torchrun", "run7")
    assert env.is_distributed and not env.is_main_process


def test_slurm_variables_use_scontrol_for_the_first_host():
    calls = []

    def scontrol(command: list[str]) -> str:
        calls.append(command)
        return "gpu07\ngpu08\ngpu09\n"

    env = read_launch_env(SLURM, run_command=scontrol)
    assert calls == [["scontrol", "show", "hostnames", "gpu[07-09]"]]
    assert env == LaunchEnv(3, 1, 6, 2, "gpu07", 20000 + 123456 % 20000, "slurm", "123456")


def test_slurm_without_scontrol_expands_the_nodelist_itself():
    env = read_launch_env({**SLURM, "SLURM_JOB_NODELIST": "node[01-03,07]"}, run_command=no_scontrol)
    assert env.master_addr == "node01"


def test_slurm_respects_master_addr_port_and_ntasks_per_node():
    env = read_launch_env({**SLURM, "MASTER_ADDR": "head", "MASTER_PORT": "1234", "SLURM_NTASKS_PER_NODE": "3"})
    assert (env.master_addr, env.master_port, env.local_world_size) == ("head", 1234, 3)


def test_torchrun_wins_inside_srun():
    # layout B: srun starts one torchrun per node, so Slurm's variables describe the node, torchrun's the worker
    env = read_launch_env({**SLURM, "SLURM_NTASKS": "2", "SLURM_PROCID": "0", **TORCHRUN})
    assert env.launcher == "torchrun" and (env.rank, env.world_size) == (5, 8)


def test_batch_script_of_a_one_task_job_is_a_single_process():
    env = read_launch_env({"SLURM_JOB_ID": "9", "SLURM_NTASKS": "1"})
    assert (env.launcher, env.world_size, env.job_id) == ("none", 1, "9")


@pytest.mark.parametrize(
    ("value", "hosts"),
    [
        ("node5", ["node5"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("a[8-10],b1", ["a8", "a9", "a10", "b1"]),
        ("rack[1-2]-n[3-4]", ["rack1-n3", "rack1-n4", "rack2-n3", "rack2-n4"]),
    ],
)
def test_expand_nodelist(value, hosts):
    assert expand_nodelist(value) == hosts
    assert first_host(value, no_scontrol) == hosts[0]


@pytest.mark.parametrize(("value", "counts"), [("4", [4]), ("2(x3)", [2, 2, 2]), ("2(x2),1", [2, 2, 1])])
def test_parse_tasks_per_node(value, counts):
    assert parse_tasks_per_node(value) == counts


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SLURM_JOB_ID": "9", "SLURM_NTASKS": "4"}, "SLURM_NTASKS=4 but SLURM_PROCID is not set.*run it under srun"),
        ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, "SLURM_PROCID=0 but SLURM_NTASKS is not set"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "SLURM_LOCALID is not set"),
        ({**SLURM, "SLURM_PROCID": "6"}, r"SLURM_PROCID=6 is outside \[0, SLURM_NTASKS=6\)"),
        ({**SLURM, "SLURM_NTASKS": "six"}, "SLURM_NTASKS='six' is not an integer"),
        ({**SLURM, "SLURM_JOB_NODELIST": ""}, "neither SLURM_JOB_NODELIST nor MASTER_ADDR"),
        ({**SLURM, "SLURM_JOB_NODELIST": "node[01-03"}, "'node\\[01-03': unbalanced brackets"),
        ({**SLURM, "SLURM_JOB_NODELIST": "node[3-1]"}, "bad range '3-1'"),
        ({**SLURM, "SLURM_TASKS_PER_NODE": "2(3)"}, "SLURM_TASKS_PER_NODE='2\\(3\\)': cannot parse"),
        ({**SLURM, "SLURM_NODEID": "3"}, "SLURM_NODEID=3 but SLURM_TASKS_PER_NODE='2\\(x3\\)' describes 3 nodes"),
        ({**SLURM, "SLURM_JOB_ID": "abc"}, "SLURM_JOB_ID='abc' does not start with digits"),
        ({**TORCHRUN, "RANK": "8"}, r"RANK=8 is outside \[0, WORLD_SIZE=8\)"),
        ({**TORCHRUN, "RANK": "-1"}, r"RANK=-1 is outside"),
        ({**TORCHRUN, "WORLD_SIZE": "0"}, "WORLD_SIZE=0: expected at least 1"),
        ({**TORCHRUN, "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({**TORCHRUN, "LOCAL_RANK": "4"}, r"LOCAL_RANK=4 is outside \[0, LOCAL_WORLD_SIZE=4\)"),
        ({**TORCHRUN, "LOCAL_WORLD_SIZE": "9"}, r"LOCAL_WORLD_SIZE=9 is outside \[1, WORLD_SIZE=8\]"),
        ({**TORCHRUN, "MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a TCP port"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK is not set but RANK=0, WORLD_SIZE=2 is"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "MASTER_ADDR is not set with WORLD_SIZE=2"),
    ],
)
def test_misconfiguration_names_the_variable(environ, message):
    with pytest.raises(DistributedError, match=message) as caught:
        read_launch_env(environ, run_command=no_scontrol)
    assert isinstance(caught.value, VfmError)


def test_init_with_a_missing_rank_fails_within_the_timeout():
    """One process claiming WORLD_SIZE=2 gets a DistributedError after its timeout, not a hang."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = (
        "from vfm.dist import DistributedError, init_distributed, read_launch_env\n"
        "try:\n"
        "    init_distributed(read_launch_env(), timeout_s=3)\n"
        "except DistributedError as error:\n"
        "    print(error); raise SystemExit(2)\n"
    )
    environ = {
        **os.environ,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-2000:]
    assert "rank 0 could not join a world of 2 (torchrun) at 127.0.0.1" in result.stdout
    assert "within 3 s" in result.stdout
    assert elapsed < 30
