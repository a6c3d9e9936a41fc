"""tools/slurm_train.sh on a real one-node Slurm cluster (slurmctld, slurmd, munged started by the test).

Skipped when Slurm is not installed, unless VFM_REQUIRE_SLURM=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from slurm_cluster import SlurmCluster, missing_slurm, slurm_cluster
from test_ddp_training import SGD, VIT

from conftest import REPO, TINY, run_tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> SlurmCluster:
    reason = missing_slurm()
    if reason is not None:
        if os.environ.get("VFM_REQUIRE_SLURM") == "1":
            pytest.fail(f"VFM_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "plugins"), str(REPO)]),
           "GPUS": "2", "GPUS_PER_NODE": "2", "CPUS_PER_TASK": "1", "GRES": "", "PYTHON": sys.executable}
    # One test cluster at a time on this machine, also when pytest-xdist splits this module over workers (`make test`
    # keeps it on one worker): the lock file lies in the folder that all workers' temporary folders share.
    with open(tmp_path_factory.getbasetemp().parent / "vfm-slurm-cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with slurm_cluster(tmp_path_factory.mktemp("slurm"), base_env=env) as running:
            yield running


def train_command(work_dir: Path, *overrides: str) -> list[str]:
    return ["bash", str(REPO / "tools" / "slurm_train.sh"), "debug", "vfm-test", str(TINY), str(work_dir),
            VIT, SGD, "data.batch_size=8", *overrides]


def steps(work_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sorted({record["step"] for record in records if record.get("split") == "train"})


def wait_for_markers(cluster: SlurmCluster, job: str, marker: Path, log: Path, timeout: float = 120) -> None:
    """Wait until both ranks of `job` have touched `marker`.rank<N> (test_wait_for_signal_at_step)."""
    deadline = time.monotonic() + timeout
    while not all(Path(f"{marker}.rank{rank}").exists() for rank in (0, 1)):
        state = cluster.job_state(job).get("JobState")
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {job} is {state} before the marker step:\n" + (
            log.read_text() if log.exists() else "") + cluster.logs()
        assert time.monotonic() < deadline, f"no rank touched {marker} in {timeout:g} s\n" + cluster.logs()
        time.sleep(0.2)


@pytest.fixture(scope="module")
def srun_run(cluster, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """slurm_train.sh started from a login shell: srun allocates and starts 2 tasks."""
    work = tmp_path_factory.mktemp("srun")
    result = subprocess.run(train_command(work), cwd=REPO, env=cluster.env, capture_output=True, text=True,
                            timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + cluster.logs()
    return work, result


def test_srun_two_tasks_match_one_process(srun_run, tmp_path):
    work, result = srun_run
    assert "2 processes (slurm)" in result.stdout + result.stderr
    assert steps(work) == [2, 4, 6, 8]  # log_interval 2, max_steps 8
    single = tmp_path / "single"
    run_tool("train", TINY, VIT, SGD, "data.batch_size=16", f"work_dir={single}", check=True)
    a, b = load_file(single / "model.safetensors"), load_file(work / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # the DDP test's tolerance; gloo AVG summing (PyTorch #162338) would be far off
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_sbatch_job_signalled_requeued_and_resumed(cluster, srun_run, tmp_path):
    """A real batch job with --requeue gets USR1 from `scancel --signal` at step 3, checkpoints, and the
    requeued job (`scontrol requeue`) resumes from it and ends bit-identical to the uninterrupted run."""
    work, marker = tmp_path / "run", tmp_path / "at_step_3"
    hook = f"hooks=[{{type: test_wait_for_signal_at_step, step: 3, marker: '{marker}'}}]"
    script = " ".join(f"'{arg}'" for arg in train_command(work, hook))
    submitted = cluster.run("sbatch", "--parsable", "--requeue", "--job-name=vfm-preempt", "--ntasks=2",
                            "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out", f"--chdir={REPO}",
                            "--wrap", script)
    job = submitted.stdout.strip().split(";")[0]
    log = tmp_path / f"slurm-{job}.out"

    wait_for_markers(cluster, job, marker, log)
    cluster.run("scancel", "--signal=USR1", job)  # to the job's steps: slurmstepd signals both srun tasks

    first = cluster.wait_for_job(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120, restarts=0)
    assert first["JobState"] == "COMPLETED", log.read_text()
    text = log.read_text()
    assert "stopped by SIGUSR1 after step 3" in text, text[-3000:]
    assert (work / "last_checkpoint").read_text() == "checkpoints/step_00000003.pt"
    assert not (work / "model.safetensors").exists()

    cluster.run("scontrol", "requeue", job)
    second = cluster.wait_for_job(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120, restarts=1)
    text = log.read_text()  # the requeued job writes the same output file again
    assert second["JobState"] == "COMPLETED", text[-3000:]
    assert "2 processes (slurm)" in text and "at step 3" in text, text[-3000:]
    assert steps(work) == [2, 4, 6, 8]
    reference, resumed = load_file(srun_run[0] / "model.safetensors"), load_file(work / "model.safetensors")
    assert all(torch.equal(reference[key], resumed[key]) for key in reference)


def test_torchrun_layout_requeues_itself_after_preemption(cluster, srun_run, tmp_path):
    """Layout B (sbatch tools/slurm_torchrun.sbatch: one task per node running torchrun with 2 workers): USR1 to the
    batch shell only, as `--signal=B:USR1@120` sends it, makes the workers checkpoint and the script requeue its own
    job; the second run resumes and ends bit-identical to layout A's uninterrupted run (same 2-rank DDP)."""
    work, marker = tmp_path / "run", tmp_path / "at_step_3"
    hook = f"hooks=[{{type: test_wait_for_signal_at_step, step: 3, marker: '{marker}'}}]"
    submitted = cluster.run(
        "sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", f"--chdir={REPO}",
        f"--output={tmp_path}/slurm-%j.out", str(REPO / "tools" / "slurm_torchrun.sbatch"), str(TINY), VIT, SGD,
        "data.batch_size=8", f"work_dir={work}", hook)
    job = submitted.stdout.strip().split(";")[0]
    log = tmp_path / f"slurm-{job}.out"

    wait_for_markers(cluster, job, marker, log)
    cluster.run("scancel", "--batch", "--signal=USR1", job)  # the batch shell only, as B:USR1 would

    done = cluster.wait_for_job(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180, restarts=1)
    text = log.read_text()  # --open-mode=append keeps both runs' output
    assert done["JobState"] == "COMPLETED", text[-3000:]
    assert "requeueing job" in text and "stopped by SIGUSR1 after step 3" in text, text[-3000:]
    assert "2 processes (torchrun)" in text and "at step 3" in text, text[-3000:]
    assert steps(work) == [2, 4, 6, 8]
    reference, resumed = load_file(srun_run[0] / "model.safetensors"), load_file(work / "model.safetensors")
    assert all(torch.equal(reference[key], resumed[key]) for key in reference)
