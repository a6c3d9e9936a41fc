"""Distributed launch and collectives: read the launcher's environment, join the process group, gather."""

from vfm.dist.collectives import (
    all_gather,
    all_gather_objects,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    gather_rows,
    get_rank,
    get_world_size,
    is_main_process,
)
from vfm.dist.launch import (
    DistributedError,
    LaunchEnv,
    destroy_distributed,
    expand_nodelist,
    first_host,
    init_distributed,
    parse_tasks_per_node,
    port_from_job_id,
    read_launch_env,
)

__all__ = [
    "DistributedError",
    "LaunchEnv",
    "all_gather",
    "all_gather_objects",
    "all_reduce_sum",
    "gather_rows",
    "all_reduce_mean",
    "barrier",
    "destroy_distributed",
    "expand_nodelist",
    "first_host",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "parse_tasks_per_node",
    "port_from_job_id",
    "read_launch_env",
]
