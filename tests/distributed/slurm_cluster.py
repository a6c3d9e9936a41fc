"""A real one-node Slurm cluster for tests: munged, slurmctld and slurmd from Debian's packages, run as root.

Everything (munge key and socket, slurm.conf, state, spool, logs, pid files) lives under one temporary folder and
the daemons listen on free, non-default ports, so a cluster can start beside a system one and leaves nothing
behind. Clients find it through `SLURM_CONF` in the environment that `slurm_cluster()` yields. See docs/slurm.md.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmClusterError(RuntimeError):
    """The cluster did not come up (the message carries the daemons' logs)."""


def missing_slurm() -> str | None:
    """Why a cluster cannot start here (a missing program or not root), or None when it can."""
    for program in (*DAEMONS, "sinfo", "sbatch", "srun", "scontrol"):
        if shutil.which(program) is None:
            return f"{program} is not installed (apt-get install slurmctld slurmd munge)"
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SlurmCluster:
    """A running cluster: `env` is os.environ plus SLURM_CONF (pass it to sbatch/srun/squeue subprocesses)."""

    root: Path
    env: dict[str, str]
    node: str
    partition: str = PARTITION
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise SlurmClusterError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def logs(self) -> str:
        """The tail of every daemon's log, for error messages."""
        parts = []
        for name in DAEMONS:
            path = self.root / "log" / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"--- {name} (last 40 lines of {path}) ---\n" + "\n".join(text.splitlines()[-40:]))
        return "\n".join(parts)

    def job_state(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...); {} once the job is forgotten."""
        result = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        if result.returncode != 0:
            return {}
        return dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)

    def wait_for_job(self, job_id: str, states: set[str], timeout: float = 120, restarts: int | None = None) -> dict:
        """Wait until the job reaches one of `states` (and has been requeued `restarts` times, when given)."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_state(job_id)
            if info.get("JobState") in states and (restarts is None or int(info.get("Restarts", 0)) == restarts):
                return info
            time.sleep(0.25)
        raise SlurmClusterError(f"job {job_id} did not reach {sorted(states)} in {timeout:g} s: {info}\n{self.logs()}")

    def stop(self) -> None:
        """Stop the daemons (slurmd first, then slurmctld, then munged) and kill what is left of the jobs."""
        for name in reversed(DAEMONS):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        # slurmstepd and job processes outlive slurmd; each runs with SLURM_CONF pointing into our folder
        for pid in _pids_using(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids_using(root: Path) -> list[int]:
    """Processes whose environment or command line names `root` (the leftovers of this cluster's jobs)."""
    needle = str(root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes() or needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def slurm_conf(root: Path, host: str, ctld_port: int, slurmd_port: int, cpus: int) -> str:
    """A slurm.conf that Slurm 22.05 accepts for one node on this host, as root, without cgroups."""
    return f"""\
ClusterName=vfmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
KillWait=5
SlurmdTimeout=60
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1 State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


@contextlib.contextmanager
def slurm_cluster(root: Path, cpus: int = 2, timeout: float = 30,
                  base_env: Mapping[str, str] | None = None) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under `root`; yield when `sinfo` shows the node idle; stop on exit."""
    reason = missing_slurm()
    if reason is not None:
        raise SlurmClusterError(reason)
    root = Path(root).resolve()
    for sub in ("munge", "state", "spool", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    # the node is this host under its own name: the trainer finds rank 0 through `scontrol show hostnames`, so the
    # node name must resolve (a made-up name makes the gloo rendezvous hang)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host, _free_port(), _free_port(), cpus))
    env = {**(base_env if base_env is not None else os.environ), "SLURM_CONF": str(conf)}
    for name in list(env):  # a job's variables (when tests run inside Slurm) would leak into our submissions
        if name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and name != "SLURM_CONF":
            del env[name]
    cluster = SlurmCluster(root=root, env=env, node=host)
    commands = {
        "munged": ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={root}/munge/munge.socket",
                   f"--pid-file={root}/run/munged.pid", f"--log-file={root}/log/munged.log",
                   f"--seed-file={root}/munge/munged.seed", "--num-threads=2"],
        "slurmctld": ["slurmctld", "-D", "-i", "-f", str(conf)],
        "slurmd": ["slurmd", "-D", "-f", str(conf), "-N", host],
    }
    try:
        for name, command in commands.items():
            output = open(root / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 - closed with the process
            cluster.processes[name] = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL, cwd=root)
            output.close()
            if name == "munged":
                _wait_for(lambda: (root / "munge" / "munge.socket").exists(), cluster, name, timeout)
        _wait_for(lambda: _node_idle(cluster), cluster, "the node to be idle in sinfo", timeout)
        yield cluster
    finally:
        cluster.stop()


def _node_idle(cluster: SlurmCluster) -> bool:
    result = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False, timeout=10)
    return result.returncode == 0 and f"{cluster.node} idle" in result.stdout


def _wait_for(ready, cluster: SlurmCluster, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in cluster.processes.items():
            if process.poll() is not None:
                raise SlurmClusterError(f"{name} exited with {process.returncode} while waiting for {what}\n"
                                        + _stdout_tail(cluster) + cluster.logs())
        if ready():
            return
        time.sleep(0.2)
    raise SlurmClusterError(f"timed out after {timeout:g} s waiting for {what}\n" + _stdout_tail(cluster)
                            + cluster.logs())


def _stdout_tail(cluster: SlurmCluster) -> str:
    parts = []
    for name in cluster.processes:
        path = cluster.root / "log" / f"{name}.stdout"
        if path.exists() and path.stat().st_size:
            parts.append(f"--- {name} stdout ---\n" + path.read_text(errors="replace")[-2000:])
    return "\n".join(parts) + "\n"
