"""Sweeps that outlive their failed runs.

Hydra's basic sweeper launches a whole batch of runs (by default the whole sweep) and then
raises the error of the first failed run only; the others' errors are not shown anywhere.
``TolerantSweeper`` launches every batch, then lists every failed run (its overrides, its
folder and its error) and ends with an error, so the command's exit status still says that
something failed. (``pretrain.run.job_errors.LogJobError`` puts each failed run's traceback in
that run's own log; under ``hydra/launcher=slurm`` the list also gives each run's SLURM job
and that job's log.) Before launching, it checks that every run's overrides compose, as Hydra's
does, but composes one run of each kind only (see ``runs_to_compose``).

Select with ``hydra/sweeper=tolerant``, the default of ``conf/pretrain.yaml`` and
``conf/finetune.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException, ConfigCompositionException
from omegaconf import OmegaConf

from pretrain.internals import basic_sweeper, configured_sweep, job_error


class SweepFailures(CompactHydraException):
    """Some runs of a sweep failed; the others finished. Hydra prints just this message."""


def describe_failure(job_num: int, job_return: JobReturn) -> str:
    error = job_error(job_return)
    folder = job_return.hydra_cfg.hydra.runtime.output_dir if job_return.hydra_cfg else "?"
    # slurm_launcher.SlurmJobReturn's fields; not isinstance: Hydra's plugin scan executes plugin modules again,
    # and the class a module imported before is then not the class of what the launcher returns.
    if getattr(job_return, "job_id", None):
        folder += f"; SLURM job {job_return.job_id}, log {job_return.log}"
    # All of it on one line: a multi-line message (a list of config problems) starts with a heading.
    message = " ".join(line.strip() for line in str(error).strip().splitlines())
    overrides = " ".join(filter_overrides(job_return.overrides or []))
    return f"#{job_num} {overrides} ({folder}): {type(error).__name__}: {message}"


def config_groups(loader: ConfigLoader, parent: str = "") -> set[str]:
    """Every config group, nested ones as ``hydra/launcher``."""
    groups = set()
    for name in loader.list_groups(parent):
        path = f"{parent}/{name}" if parent else name
        groups |= {path, *config_groups(loader, path)}
    return groups


def runs_to_compose(batch: Sequence[Sequence[str]], groups: set[str]) -> list[Sequence[str]]:
    """One run of each kind in ``batch``: runs whose overrides differ only in the plain values of
    keys that are not config groups (``seed=0..99``, ``optimizer.lr=...``) compose alike or fail
    alike, so composing one of them checks all. A config group's choice, a deletion, a package
    and the shape of a value (scalar, list, dict) each make a different kind."""
    parser = OverridesParser.create()
    kinds: dict[tuple, Sequence[str]] = {}
    for run in batch:
        kind = []
        for override in parser.parse_overrides(list(run)):
            if override.key_or_group in groups or override.package is not None or override.is_delete():
                kind.append(override.input_line)
            else:
                value = override.value()
                shape = type(value).__name__ if isinstance(value, (list, dict)) else "scalar"
                kind.append((override.type, override.key_or_group, shape))
        kinds.setdefault(tuple(kind), run)
    return list(kinds.values())


class TolerantSweeper(basic_sweeper()):
    """``BasicSweeper`` (same config: ``max_batch_size``, ``params``) that runs on past failures."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*configured_sweep(self), *arguments])
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns, failures, first = [], [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first)
            failures += [
                describe_failure(first + i, r) for i, r in enumerate(results) if r.status != JobStatus.COMPLETED
            ]
            first += len(batch)
            returns.append(results)
        if failures:
            listing = "\n  ".join(failures)
            raise SweepFailures(
                f"{len(failures)} of {first} runs failed (each run's traceback is in its folder's log):\n  {listing}"
            )
        return returns

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        # A composition costs ~0.15 s (Hydra reads and merges every config file again), as much as
        # a short fine-tuning run's training: a 100-seed sweep composes once here, not 100 times.
        loader = self.hydra_context.config_loader
        for run in runs_to_compose(batch, config_groups(loader)):
            try:
                super().validate_batch_is_legal([run])
            except ConfigCompositionException as err:  # a mistyped key or option: said as for a single run
                # here, not at the top: Hydra imports every plugin it finds
                from pretrain.run.cli import explain_refusal, refuse

                refuse(explain_refusal(err, self.config.hydra.job.config_name, run))
