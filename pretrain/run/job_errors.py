"""A failed Hydra run's traceback, in that run's own log."""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pretrain.internals import job_error

log = logging.getLogger(__name__)


class LogJobError(Callback):
    """Logs a failed run's traceback to ``RUN/<job name>.log``.

    Hydra keeps a failed run's exception but logs nothing, and a sweep shows at most one
    error. This runs in the run's own process (so also under the submitit launchers), while
    the run's log file is still open. Configured in ``hydra.callbacks``.
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            error = job_error(job_return)
            log.error("this run failed", exc_info=(type(error), error, error.__traceback__))
