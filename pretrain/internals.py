"""Every use of Lightning's and Hydra's private internals, one function each, with why it is needed.

Written for Lightning 2.6 and hydra-core 1.3 (``WRITTEN_FOR``); ``tests/test_internals.py`` checks
that each private name used here, and each private method ``OVERRIDDEN`` elsewhere, still exists in
the installed versions with the shape relied on, so an upgrade fails there first. Lightning is not
imported here: Hydra imports this module while it scans its plugins, before any run.
"""

from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn

WRITTEN_FOR = {"lightning": "2.6", "hydra-core": "1.3"}

# Private methods our subclasses override, which the framework calls: (module, class, method, why).
OVERRIDDEN = [
    (
        "lightning.pytorch.callbacks",
        "ModelCheckpoint",
        "_save_checkpoint",
        "LastCheckpoint records the checkpoint actually written (last_model_path is set before the write)",
    ),
    (
        "lightning.pytorch.loggers.csv_logs",
        "ExperimentWriter",
        "_check_log_dir_exists",
        "ContinuingCSVLogger: Lightning deletes metrics.csv here; a resumed run appends to it",
    ),
    (
        "lightning.pytorch.loggers.csv_logs",
        "ExperimentWriter",
        "_rewrite_with_new_header",
        "ContinuingCSVLogger: a new column rewrites metrics.csv atomically",
    ),
    (
        "submitit.slurm.slurm",
        "SlurmInfoWatcher",
        "_make_command",
        "hydra/launcher=slurm asks squeue for job states where the cluster's sacct does not answer",
    ),
]


def args_parser() -> ArgumentParser:
    """The command line as ``@hydra.main`` reads it (pretrain.run.cli reads ``-m`` and the overrides first)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def locate(path: str) -> Any:
    """The object at a dotted path; ``hydra.utils.get_object`` is the same but logs an error for a bad
    path, which config validation reports itself."""
    from hydra._internal.utils import _locate

    return _locate(path)


def basic_sweeper() -> type:
    """Hydra's basic sweeper, which TolerantSweeper extends (there is no public one). Looked up at each call:
    Hydra's plugin scan executes its module again, and the class defined last is the one that works."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper


def configured_sweep(sweeper: Any) -> list[str]:
    """The sweep of ``hydra.sweeper.params`` as overrides, which BasicSweeper adds before the command line's."""
    return sweeper._parse_config()


def job_error(job_return: JobReturn) -> BaseException:
    """A failed job's exception; the public ``JobReturn.return_value`` raises it and writes to stderr."""
    return job_return._return_value


def logs_this_step(trainer: Any) -> bool:
    """Whether the loggers write at this step (every ``log_every_n_steps``): Lightning's own monitors
    test this; logging on the other steps through ``self.log`` costs about a millisecond a value."""
    return trainer._logger_connector.should_update_logs


def logged_step(trainer: Any) -> int:
    """The step the loggers write rows at: Lightning's count of stepped batches (``global_step``
    counts optimizer steps, twice a batch for a GAN)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def ddp_arguments(strategy: Any) -> dict[str, Any]:
    """The keyword arguments a DDP strategy gives ``DistributedDataParallel`` ({} for other strategies),
    to refuse a task that needs ``find_unused_parameters`` before DDP fails obscurely."""
    return getattr(strategy, "_ddp_kwargs", {})


def save_last_checkpoint(callback: Any, trainer: Any) -> bool:
    """Write a ModelCheckpoint's ``last.ckpt`` now, as it does itself at its own moments (LastCheckpoint
    writes at the last epoch's end and on SIGTERM); False where the Trainer's state forbids a write."""
    if callback._should_skip_saving_checkpoint(trainer):
        return False
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
    return True


def set_csv_writer(logger: Any, writer: Any) -> Any:
    """Give a CSVLogger the writer it logs through (it builds its own, which deletes metrics.csv)."""
    logger._experiment = writer
    return writer


def csv_writer(logger: Any) -> Any:
    """The writer a CSVLogger built already, or None."""
    return logger._experiment


def download_with_litdata(remote: str, local: Path) -> None:
    """Copy one file from litdata's storage (s3://, gs://, ...) with its own clients and credentials."""
    from litdata.streaming.fs_provider import _get_fs_provider

    _get_fs_provider(remote).download_file(remote, str(local))
