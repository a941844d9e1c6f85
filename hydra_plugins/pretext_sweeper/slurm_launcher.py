"""``hydra/launcher=slurm``: Hydra's submitit launcher for SLURM, fit for real clusters.

Every run of a sweep is a job of one SLURM job array (``conf/hydra/launcher/slurm.yaml``). Unlike
the plugin's launcher, this one

- follows the jobs with ``sacct``, or with ``squeue`` where the cluster keeps no accounting (many
  do not give users ``sacct``; submitit would warn at every poll), and logs each run's job state
  when it changes;
- counts a job that ended without a result (killed at its time limit or for its memory,
  cancelled, timed out more than ``max_num_timeout`` times) as a failed run, where the plugin
  raises submitit's error and the sweep loses the other runs' returns;
- hands back each run's SLURM job id and log with its return, for the sweep's list of failed
  runs (``TolerantSweeper``).

Requeueing is submitit's: SLURM signals a job ``signal_delay_s`` before its time limit, submitit
requeues it (at most ``max_num_timeout`` times) and the requeued job runs the same run in the same
folder, which continues from its checkpoint (``pretrain/run/resume.py``).
"""

# No "from __future__ import annotations": Hydra's plugin scan runs this module outside sys.modules,
# where dataclasses cannot resolve string annotations.
import getpass
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)

# tasks_per_node's default: one process per GPU (Lightning's DDP takes its ranks from SLURM), one without GPUs.
OmegaConf.register_new_resolver("one_task_per_gpu", lambda gpus: max(1, int(gpus or 0)), replace=True)


@dataclass
class SlurmJobReturn(JobReturn):
    """A run's return, with the SLURM job that ran it and that job's log."""

    job_id: str = ""
    log: str = ""


class SlurmJobError(Exception):
    """A run's job ended without the run's result."""


def job_states(delay_s: float) -> Any:
    """A watcher of job states for submitit's jobs: sacct where it answers, else squeue."""
    from submitit.slurm.slurm import SlurmInfoWatcher  # submitit is imported only by a sweep that uses it

    class JobStates(SlurmInfoWatcher):
        # squeue forgets a job MinJobAge (5 minutes by default) after it ended: a job seen before
        # and missing since has ENDED (its result file, or the lack of one, says how).
        ENDED = "ENDED"

        def __init__(self) -> None:
            super().__init__(delay_s)
            self.source: str | None = None
            self.seen: set[str] = set()

        def _make_command(self) -> list[str] | None:  # see pretrain.internals.OVERRIDDEN
            sacct = super()._make_command()
            if sacct is None:
                return None
            if self.source is None:
                probe = subprocess.run(sacct, capture_output=True, text=True)
                self.source = "sacct" if probe.returncode == 0 else "squeue"
                if self.source == "squeue":
                    answer = (probe.stderr or probe.stdout).strip() or f"exit status {probe.returncode}"
                    log.info(f"sacct does not answer here ({answer}): job states come from squeue")
            if self.source == "sacct":
                return sacct
            user = getpass.getuser()
            return ["squeue", f"--user={user}", "--array", "--states=all", "--noheader", "--format=%i|%T|%N"]

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            if self.source == "sacct":
                return super().read_info(string)
            text = string.decode() if isinstance(string, bytes) else string
            info = super().read_info("JobID|State|NodeList\n" + text)
            self.seen |= info.keys() & self._registered
            for job_id in self.seen - info.keys():
                info[job_id] = {"JobID": job_id, "State": self.ENDED, "NodeList": ""}
            return info

    return JobStates()


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """The plugin's ``SlurmLauncher`` (same config), with the changes listed in this module's doc."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        # The plugin's launch up to the submission: the executor, its parameters, the sweep folder.
        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        sweep = self.config.hydra.sweep
        log.info(f"Submitit 'slurm' sweep output dir : {sweep.dir}")
        Path(str(sweep.dir)).mkdir(parents=True, exist_ok=True)
        if "mode" in sweep:
            os.chmod(str(sweep.dir), int(str(sweep.mode), 8))
        nums = range(initial_job_idx, initial_job_idx + len(job_overrides))
        arguments = []
        for num, overrides in zip(nums, job_overrides, strict=True):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            arguments.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*arguments, strict=True))
        return self.wait(jobs, job_overrides, initial_job_idx)

    def wait(self, jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]], first: int) -> list[SlurmJobReturn]:
        """Each job's return, once all have ended; each job's state is logged when it changes."""
        states = job_states(delay_s=30)
        for job in jobs:
            for task in {job, *(job.task(k) for k in range(job.num_tasks))}:
                task.watcher = states  # instead of submitit's, which asks sacct only
        returns: dict[int, SlurmJobReturn] = {}
        shown: dict[int, str] = {}
        while len(returns) < len(jobs):
            for i, job in enumerate(jobs):
                if i in returns:
                    continue
                if job.done():
                    returns[i] = self.job_return(job, job_overrides[i], first + i)
                    state = returns[i].status.name
                else:
                    state = job.state
                if shown.get(i) != state:
                    shown[i] = state
                    log.info(f"#{first + i} SLURM job {job.job_id}: {state}")
            if len(returns) < len(jobs):
                time.sleep(1)  # result files are looked for every second, job states asked for every 30 s at most
        return [returns[i] for i in range(len(jobs))]

    def job_return(self, job: Any, overrides: Sequence[str], num: int) -> SlurmJobReturn:
        """What the run returned, or a failed return for a job that ended without a result."""
        from submitit.core.utils import FailedJobError

        first_task = job.task(0)
        try:
            run = first_task.result()
        except Exception as error:
            if isinstance(error, FailedJobError):  # an error in the job outside the run: its traceback's last line
                lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith("---")]
                end = next((i for i, line in enumerate(lines) if line.startswith("You can check full logs")), 0)
                message = lines[end - 1].strip() if end > 0 else type(error).__name__
            else:  # UncompletedJobError: no result file
                message = f"the job ended without a result (SLURM state: {job.state})"
            config = self.job_config(overrides, num)
            run = JobReturn(overrides=list(overrides), hydra_cfg=config, status=JobStatus.FAILED)
            run.return_value = SlurmJobError(message)
        return SlurmJobReturn(**vars(run), job_id=job.job_id, log=str(first_task.paths.stdout))

    def job_config(self, overrides: Sequence[str], num: int) -> Any:
        """The Hydra config a run would have had, with its folder, for a job that returned none."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra):
            config.hydra.job.num = num
            folder = Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
            config.hydra.runtime.output_dir = str(folder.absolute())
        return config
