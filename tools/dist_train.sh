#!/usr/bin/env bash
# Train with torchrun: tools/dist_train.sh CONFIG GPUS [key=value ...]
# One node by default; for several, run it on every node with NNODES, NODE_RANK (0..NNODES-1), and the
# MASTER_ADDR / MASTER_PORT of node 0. PYTHON picks the interpreter, VFM_TRAIN_SCRIPT the entry point
# (default tools/train.py); DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [key=value ...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
if ! [[ "$GPUS" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: GPUS must be a positive integer (processes per node), got '$GPUS'" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}
TRAIN_SCRIPT=${VFM_TRAIN_SCRIPT:-$ROOT/tools/train.py}

command=(
    "$PYTHON" -m torch.distributed.run
    --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS"
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
    "$TRAIN_SCRIPT" "$CONFIG" "$@"
)
if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${command[@]}"
    echo
    exit 0
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${command[@]}"
