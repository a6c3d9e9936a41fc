"""Read the launch environment (torchrun, Slurm or none) and set up the process group."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from itertools import product
from typing import Literal

import torch
import torch.distributed as dist

from vfm.errors import VfmError

Launcher = Literal["torchrun", "slurm", "none"]
CommandRunner = Callable[[list[str]], str]

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500
SLURM_PORT_BASE = 20000  # ports derived from the job id fall in [20000, 40000): above common services, below ephemeral
SLURM_PORT_RANGE = 20000


class DistributedError(VfmError):
    """The launch environment is misconfigured or the process group cannot be set up."""


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, as its launcher described it."""

    rank: int
    """Global rank of this process, in [0, world_size)."""
    local_rank: int
    """Rank among the processes on this node; selects the GPU."""
    world_size: int
    """Number of processes in the job."""
    local_world_size: int
    """Number of processes on this node."""
    master_addr: str
    """Host of rank 0, where the rendezvous store listens."""
    master_port: int
    """Port of the rendezvous store."""
    launcher: Launcher
    """Who started this process: torchrun, Slurm's srun, or nobody (a plain single process)."""
    job_id: str | None = None
    """Slurm job id or torchrun run id, when there is one."""

    @property
    def is_distributed(self) -> bool:
        """True when a launcher started this process (even a world of one)."""
        return self.launcher != "none"

    @property
    def is_main_process(self) -> bool:
        """True on global rank 0."""
        return self.rank == 0


def read_launch_env(environ: Mapping[str, str] | None = None, run_command: CommandRunner | None = None) -> LaunchEnv:
    """Read torchrun's variables, else Slurm's, else describe a single process.

    torchrun's win when both are present: layout B runs torchrun inside srun, where Slurm's variables describe
    one task per node and torchrun's describe the real workers.

    Args:
        environ: the variables to read; os.environ when None.
        run_command: runs a command and returns its stdout (for `scontrol show hostnames`); tests inject one.

    Raises:
        DistributedError: a variable is missing, not an integer, or out of range; names the variable and value.
    """
    environ = os.environ if environ is None else environ
    if "RANK" in environ or "WORLD_SIZE" in environ or "LOCAL_RANK" in environ:
        env = _read_torchrun(environ)
    elif "SLURM_PROCID" in environ or "SLURM_NTASKS" in environ:
        env = _read_slurm(environ, run_command or _run_command)
    else:
        env = LaunchEnv(0, 0, 1, 1, DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT, "none", None)
    _validate(env)
    return env


def _read_torchrun(environ: Mapping[str, str]) -> LaunchEnv:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if name not in environ:
            present = ", ".join(
                f"{key}={environ[key]}" for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if key in environ
            )
            raise DistributedError(
                f"{name} is not set but {present} is: a torchrun-style launch needs RANK, WORLD_SIZE and LOCAL_RANK "
                "(start the job with torchrun, or set all three)"
            )
    world_size = _int(environ, "WORLD_SIZE")
    master_addr = environ.get("MASTER_ADDR")
    if master_addr is None:
        if world_size > 1:
            raise DistributedError(f"MASTER_ADDR is not set with WORLD_SIZE={world_size}: set the host of rank 0")
        master_addr = DEFAULT_MASTER_ADDR
    return LaunchEnv(
        rank=_int(environ, "RANK"),
        local_rank=_int(environ, "LOCAL_RANK"),
        world_size=world_size,
        # a hand-made torchrun-style environment may omit it; one node is the only safe guess
        local_world_size=_int(environ, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in environ else world_size,
        master_addr=master_addr,
        master_port=_int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else DEFAULT_MASTER_PORT,
        launcher="torchrun",
        job_id=environ.get("TORCHELASTIC_RUN_ID") or environ.get("SLURM_JOB_ID"),
    )


def _read_slurm(environ: Mapping[str, str], run_command: CommandRunner) -> LaunchEnv:
    world_size = _int(environ, "SLURM_NTASKS") if "SLURM_NTASKS" in environ else None
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if "SLURM_PROCID" not in environ:
        if world_size is not None and world_size > 1:
            raise DistributedError(
                f"SLURM_NTASKS={world_size} but SLURM_PROCID is not set: python was started by the batch script "
                f"itself, so only one of {world_size} processes runs; run it under srun (tools/slurm_train.sh) "
                "or torchrun (tools/slurm_torchrun.sbatch)"
            )
        # the batch script of a one-task job: a plain single process
        return LaunchEnv(0, 0, 1, 1, DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT, "none", job_id)
    if world_size is None:
        raise DistributedError(f"SLURM_PROCID={environ['SLURM_PROCID']} but SLURM_NTASKS is not set: run under srun")
    if "SLURM_LOCALID" not in environ:
        raise DistributedError(f"SLURM_PROCID={environ['SLURM_PROCID']} but SLURM_LOCALID is not set: run under srun")
    if "MASTER_ADDR" in environ:
        master_addr = environ["MASTER_ADDR"]
    elif world_size == 1:
        master_addr = DEFAULT_MASTER_ADDR
    else:
        nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
        if not nodelist:
            raise DistributedError(
                f"SLURM_NTASKS={world_size} but neither SLURM_JOB_NODELIST nor MASTER_ADDR is set: "
                "cannot find the host of rank 0"
            )
        master_addr = first_host(nodelist, run_command)
    if "MASTER_PORT" in environ:
        master_port = _int(environ, "MASTER_PORT")
    elif job_id is not None:
        master_port = port_from_job_id(job_id)
    else:
        master_port = DEFAULT_MASTER_PORT
    return LaunchEnv(
        rank=_int(environ, "SLURM_PROCID"),
        local_rank=_int(environ, "SLURM_LOCALID"),
        world_size=world_size,
        local_world_size=_slurm_local_world_size(environ, world_size),
        master_addr=master_addr,
        master_port=master_port,
        launcher="slurm",
        job_id=job_id,
    )


def _slurm_local_world_size(environ: Mapping[str, str], world_size: int) -> int:
    if "SLURM_NTASKS_PER_NODE" in environ:
        return _int(environ, "SLURM_NTASKS_PER_NODE")
    if "SLURM_TASKS_PER_NODE" in environ:
        per_node = parse_tasks_per_node(environ["SLURM_TASKS_PER_NODE"])
        node = _int(environ, "SLURM_NODEID") if "SLURM_NODEID" in environ else 0
        if node >= len(per_node):
            raise DistributedError(
                f"SLURM_NODEID={node} but SLURM_TASKS_PER_NODE={environ['SLURM_TASKS_PER_NODE']!r} "
                f"describes {len(per_node)} nodes"
            )
        return per_node[node]
    nodes = _int(environ, "SLURM_NNODES") if "SLURM_NNODES" in environ else 1
    return max(1, world_size // nodes)


def _validate(env: LaunchEnv) -> None:
    names = {
        "torchrun": ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"),
        "slurm": ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "tasks per node"),
        "none": ("rank", "local rank", "world size", "local world size"),
    }[env.launcher]
    rank_name, local_rank_name, world_name, local_world_name = names
    if env.world_size < 1:
        raise DistributedError(f"{world_name}={env.world_size}: expected at least 1")
    if not 0 <= env.rank < env.world_size:
        raise DistributedError(f"{rank_name}={env.rank} is outside [0, {world_name}={env.world_size})")
    if not 1 <= env.local_world_size <= env.world_size:
        raise DistributedError(
            f"{local_world_name}={env.local_world_size} is outside [1, {world_name}={env.world_size}]"
        )
    if not 0 <= env.local_rank < env.local_world_size:
        raise DistributedError(
            f"{local_rank_name}={env.local_rank} is outside [0, {local_world_name}={env.local_world_size})"
        )
    if not 0 < env.master_port < 65536:
        raise DistributedError(f"MASTER_PORT={env.master_port} is not a TCP port (1-65535)")


def _int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value.strip())
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not an integer") from None


def port_from_job_id(job_id: str) -> int:
    """A rendezvous port derived from the Slurm job id, so that jobs sharing a node do not collide."""
    digits = re.match(r"\d+", job_id)
    if digits is None:
        raise DistributedError(f"SLURM_JOB_ID={job_id!r} does not start with digits; set MASTER_PORT")
    return SLURM_PORT_BASE + int(digits.group()) % SLURM_PORT_RANGE


def parse_tasks_per_node(value: str) -> list[int]:
    """Expand Slurm's compressed tasks-per-node list: "2(x3),1" -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in value.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if match is None:
            raise DistributedError(f"SLURM_TASKS_PER_NODE={value!r}: cannot parse {item!r} (expected N or N(xM))")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm host list without scontrol: "node[01-03,07],gpu5" -> node01..node03, node07, gpu5."""
    hosts: list[str] = []
    for name in _split_top_level(nodelist):
        # each bracket group multiplies: "rack[1-2]-n[3-4]" -> rack1-n3, rack1-n4, rack2-n3, rack2-n4
        parts = re.split(r"(\[[^\]]*\])", name)
        choices = [_expand_range(part[1:-1], nodelist) if part.startswith("[") else [part] for part in parts]
        hosts += ["".join(combination) for combination in product(*choices)]
    return hosts


def _split_top_level(nodelist: str) -> list[str]:
    names, depth, current = [], 0, ""
    for char in nodelist.strip():
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise DistributedError(f"SLURM_JOB_NODELIST={nodelist!r}: unbalanced brackets")
        if char == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise DistributedError(f"SLURM_JOB_NODELIST={nodelist!r}: unbalanced brackets")
    names.append(current)
    if any(not name for name in names):
        raise DistributedError(f"SLURM_JOB_NODELIST={nodelist!r}: empty host name")
    return names


def _expand_range(ranges: str, nodelist: str) -> list[str]:
    values: list[str] = []
    for item in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise DistributedError(f"SLURM_JOB_NODELIST={nodelist!r}: bad range {item!r} (expected N or N-M)")
        start, stop = match.group(1), match.group(2) or match.group(1)
        width = len(start)  # "01-03" keeps its zero padding
        values += [str(number).zfill(width) for number in range(int(start), int(stop) + 1)]
    return values


def first_host(nodelist: str, run_command: CommandRunner | None = None) -> str:
    """First host of a Slurm node list, from `scontrol show hostnames`, else expanded here when scontrol is missing."""
    try:
        output = (run_command or _run_command)(["scontrol", "show", "hostnames", nodelist])
        hosts = output.split()
    except (OSError, subprocess.SubprocessError):
        hosts = []
    return hosts[0] if hosts else expand_nodelist(nodelist)[0]


def _run_command(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout


def init_distributed(env: LaunchEnv | None = None, backend: str | None = None, timeout_s: float = 600.0) -> bool:
    """Join the process group the launcher described; returns False when there is nothing to join.

    The rendezvous and every collective time out after `timeout_s`, so a world size that does not match the
    processes really started fails with DistributedError instead of hanging. Backend: nccl with CUDA, else gloo.
    """
    env = read_launch_env() if env is None else env
    if not env.is_distributed or dist.is_initialized():
        return False
    if not dist.is_available():
        raise DistributedError(f"{env.launcher} started {env.world_size} processes but torch.distributed is missing")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if env.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {env.local_rank} has no GPU: this node shows {torch.cuda.device_count()} CUDA devices"
            )
        torch.cuda.set_device(env.local_rank)
    # libraries that read the environment themselves (DeepSpeed, torch's env:// store) see the same values
    os.environ.update(
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        LOCAL_WORLD_SIZE=str(env.local_world_size),
    )
    try:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    except RuntimeError as error:  # torch's DistStoreError and DistError are RuntimeErrors
        raise DistributedError(
            f"rank {env.rank} could not join a world of {env.world_size} ({env.launcher}) at "
            f"{env.master_addr}:{env.master_port} within {timeout_s:g} s: check that {env.world_size} processes "
            f"were started and can reach rank 0 ({type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]})"
        ) from error
    return True


def destroy_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
