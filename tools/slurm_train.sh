#!/usr/bin/env bash
# Train under Slurm with one task per GPU (layout A): tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [key=value ...]
# srun starts GPUS tasks, GPUS_PER_NODE per node; every task runs tools/train.py and reads its rank from
# SLURM_PROCID (vfm.dist.read_launch_env). Slurm sends SIGUSR1 SIGNAL_SECONDS before the time limit so the run
# saves a checkpoint; resume=auto continues from it when the job is requeued. Requeueing is a job (sbatch) option,
# not a step one (srun rejects --requeue): submit this script inside `sbatch --requeue ... --wrap 'tools/slurm_train.sh ...'`
# and requeue with `scontrol requeue JOBID` (docs/slurm.md).
# Environment: GPUS (8), GPUS_PER_NODE (min(GPUS, 8)), CPUS_PER_TASK (5), GRES (gpu:GPUS_PER_NODE; empty for
# none), SIGNAL_SECONDS (120), SRUN_ARGS (extra srun options), PYTHON, VFM_TRAIN_SCRIPT, DRY_RUN=1 (print only).
set -euo pipefail

if [ "$#" -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [key=value ...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS < 8 ? GPUS : 8))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
GRES=${GRES-gpu:$GPUS_PER_NODE}
SIGNAL_SECONDS=${SIGNAL_SECONDS:-120}
PYTHON=${PYTHON:-python}
TRAIN_SCRIPT=${VFM_TRAIN_SCRIPT:-$ROOT/tools/train.py}
read -r -a srun_extra <<< "${SRUN_ARGS:-}"

command=(
    srun --partition="$PARTITION" --job-name="$JOB_NAME"
    --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK"
    ${GRES:+--gres="$GRES"}
    --kill-on-bad-exit=1 --signal=USR1@"$SIGNAL_SECONDS"
    "${srun_extra[@]}"
    "$PYTHON" -u "$TRAIN_SCRIPT" "$CONFIG" work_dir="$WORK_DIR" resume=auto "$@"
)
if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${command[@]}"
    echo
    exit 0
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${command[@]}"
