"""Stands in for tools/train.py under tools/dist_train.sh: records what the launch gave each process."""

import json
import sys
from pathlib import Path

from vfm.dist import read_launch_env

if __name__ == "__main__":
    env = read_launch_env()
    out = Path(sys.argv[1]).parent / f"rank{env.rank}.json"
    out.write_text(
        json.dumps(
            {
                "argv": sys.argv[1:],
                "env": [env.rank, env.local_rank, env.world_size, env.local_world_size, env.launcher],
            }
        )
    )
