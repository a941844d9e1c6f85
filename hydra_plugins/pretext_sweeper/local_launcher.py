"""``hydra/launcher=submitit_local``: Hydra's submitit launcher for local processes, which shows each
run's output (its results line, its errors) as Hydra's basic launcher does, once the runs have ended:
submitit writes a run's output to its log files only (``conf/hydra/launcher/submitit_local.yaml``)."""

# No "from __future__ import annotations": Hydra's plugin scan runs this module outside sys.modules,
# where dataclasses cannot resolve string annotations.
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

# submitit's own log lines in a run's output ("submitit INFO (...) - Job completed successfully").
SUBMITIT_LOG = re.compile(r"submitit [A-Z]+ \(|\[[^]]*\]\[submitit\]\[")


class LocalLauncher(submitit_launcher.LocalLauncher):
    """The plugin's ``LocalLauncher`` (same config); each run's output is copied to this process's."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = super().launch(job_overrides, initial_job_idx)
        for run in returns:
            job_id = str(run.hydra_cfg.hydra.job.id)  # submitit's, set in the run's process
            folder = Path(str(self.params["submitit_folder"]).replace("%j", job_id))
            for suffix, stream in (("out", sys.stdout), ("err", sys.stderr)):
                log = folder / f"{job_id}_0_log.{suffix}"
                if log.is_file():
                    lines = log.read_text(errors="replace").splitlines(keepends=True)
                    stream.writelines(line for line in lines if not SUBMITIT_LOG.match(line))
            sys.stdout.flush()
        return returns
