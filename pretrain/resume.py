"""``resume=RUN``: continue an interrupted run in its own folder, from ``RUN/checkpoints/last.ckpt``.

- ``resume=RUN`` (a run folder, or a ``.ckpt`` inside it): the run continues with the
  config it was started with (``RUN/.hydra/config.yaml``) and writes to ``RUN`` itself. The
  config files point Hydra's run folder there too (``hydra.run.dir`` through the
  ``resume_dir`` resolver), so no second folder is made; Hydra's record of the resuming
  command goes to ``RUN/.hydra/resume`` and leaves the original one alone.
- ``resume=auto``: continue from this run's own folder if it holds a checkpoint, else start
  afresh: for a job that a cluster requeues with the same run folder.
- ``resume=null`` (default): a new run; but in a SLURM job that SLURM started again (requeued
  by ``hydra/launcher=slurm`` at its time limit, or after a pre-emption or a node failure),
  ``resume=auto``: the job runs the same run in the same folder, and continues it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pretrain.validate import ConfigError

AUTO = "auto"
LAST = Path("checkpoints") / "last.ckpt"
RESULTS = "results.json"  # a run's last file: written after its last checkpoint


def slurm_restarts() -> int:
    """How many times SLURM has started this job again (0 outside SLURM, and at a job's first start)."""
    count = os.environ.get("SLURM_RESTART_COUNT", "")
    return int(count) if count.isdigit() else 0


def run_folder(resume: str) -> Path:
    """The run folder ``resume`` names: itself, or the run that holds the checkpoint it names."""
    path = Path(resume)
    if path.suffix == ".ckpt":
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def _hydra_run_dir(resume: str | None, default: str) -> str:
    return default if resume in (None, AUTO) else str(run_folder(resume))


def _hydra_output_subdir(resume: str | None) -> str:
    return ".hydra" if resume in (None, AUTO) else ".hydra/resume"


OmegaConf.register_new_resolver("resume_dir", _hydra_run_dir, replace=True)
OmegaConf.register_new_resolver("resume_subdir", _hydra_output_subdir, replace=True)


def checkpoint_to_resume(resume: str | None, run_dir: Path) -> str | None:
    """The checkpoint ``trainer.fit`` continues from, or None for a fresh start."""
    restarted = resume is None and slurm_restarts() > 0
    if resume == AUTO or restarted:
        # Lightning's own SLURM requeue (SIGUSR1) leaves hpc_ckpt_N.ckpt in the run folder.
        found = [p for p in [run_dir / LAST, *Path(run_dir).glob("hpc_ckpt_*.ckpt")] if p.is_file()]
        if not found:
            return None
        checkpoint = str(max(found, key=lambda p: p.stat().st_mtime))
        if restarted:
            print(f"SLURM restarted this job ({slurm_restarts()}x): continuing from {checkpoint}", file=sys.stderr)
        return checkpoint
    if resume is None:
        return None
    path = Path(resume)
    checkpoint = path if path.suffix == ".ckpt" else path / LAST
    if not checkpoint.is_file():
        missing = run_folder(resume) if not run_folder(resume).is_dir() else checkpoint
        raise ConfigError(
            f"resume={resume}: {missing} does not exist. Point resume at the folder of an interrupted run "
            f"(it holds {LAST}); a run killed before its first checkpoint cannot be resumed: start it afresh."
        )
    return str(checkpoint)


def finished_before_restart(resume: str | None, run_dir: Path) -> bool:
    """Whether SLURM restarted the job of a run that had already ended: its ``results.json`` is
    newer than its last checkpoint. (A signal to requeue can come while the run writes its results.)"""
    if resume not in (None, AUTO) or slurm_restarts() == 0:
        return False
    results, last = Path(run_dir) / RESULTS, Path(run_dir) / LAST
    return results.is_file() and (not last.is_file() or results.stat().st_mtime_ns >= last.stat().st_mtime_ns)


def resumed_config(cfg: DictConfig, hydra_dir: Path, overrides: list[str]) -> tuple[DictConfig, Path]:
    """The config and folder a command runs with: with ``resume=RUN``, RUN's own config (the
    command line may add nothing else but Hydra options) and RUN; otherwise ``cfg`` and Hydra's folder."""
    resume = cfg.get("resume")
    if resume in (None, AUTO):
        return cfg, hydra_dir
    folder = run_folder(resume)
    saved = folder / ".hydra" / "config.yaml"
    checkpoint_to_resume(resume, folder)  # the folder and its checkpoint exist
    if not saved.is_file():
        raise ConfigError(
            f"resume={resume}: {folder} is not the folder of a run started from the command line "
            f"(it has no .hydra/config.yaml); point resume at outputs/.../DATE/TIME of the interrupted run"
        )
    extra = [o for o in overrides if not o.lstrip("+~").startswith(("resume=", "hydra.", "hydra/"))]
    if extra:
        raise ConfigError(
            f"resume={resume} continues that run with the config it was started with ({saved}); "
            f"the other overrides {extra} would change it: drop them, or start a new run"
        )
    original = OmegaConf.load(saved)
    original.resume = str(resume)
    return original, folder
