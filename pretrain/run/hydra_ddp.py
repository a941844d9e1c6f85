"""Lightning DDP inside a Hydra job: ranks > 0 re-run exactly this job, in this job's folder.

Lightning starts ranks 1..n-1 of a local DDP run by re-running the script with
``sys.argv[1:] + hydra.run.dir=<hydra.run.dir> hydra.output_subdir=null`` (see
``lightning.fabric.strategies.launchers.subprocess_script._hydra_subprocess_cmd``). That is
right for a single run, but in a multirun ``sys.argv`` is the whole sweep (``-m seed=0,1,2``)
and ``hydra.run.dir`` is not the job's folder: every rank would start a sweep of its own and
write to a new folder. A job also leaves the DDP environment variables and the process group
of its world behind, so the next job of the sweep would join the previous job's world.

``rank_processes_rerun_this_job`` fixes the three for the duration of one job.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

# Set in the parent by Lightning's launcher when it starts the other ranks.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra options that choose the primary config; a rank must compose the same one.
CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")


def job_argv(argv: list[str], job_overrides: list[str]) -> list[str]:
    """``argv`` with the sweep replaced by one job: config flags kept, ``-m`` and overrides dropped."""
    out, rest = [argv[0]], iter(argv[1:])
    for arg in rest:
        if arg in CONFIG_FLAGS:
            out += [arg, next(rest)]
        elif arg.split("=", 1)[0] in CONFIG_FLAGS:
            out.append(arg)
    return out + list(job_overrides)


@contextmanager
def rank_processes_rerun_this_job() -> Iterator[None]:
    """Run one Hydra job so that DDP's ranks > 0 re-run this job (not the sweep) in its folder,
    and so that the job's DDP world ends with it."""
    hydra_cfg = HydraConfig.get()
    saved_argv, saved_env = sys.argv, {k: os.environ.get(k) for k in DDP_ENV}
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:
        sys.argv = job_argv(sys.argv, list(hydra_cfg.overrides.task))
        saved_run_dir = hydra_cfg.run.dir
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        if multirun:
            sys.argv = saved_argv
            with read_write(hydra_cfg):
                hydra_cfg.run.dir = saved_run_dir
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
