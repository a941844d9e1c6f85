"""``resume=RUN``: continue an interrupted run in its own folder, from ``RUN/checkpoints/last.ckpt``.

- ``resume=RUN`` (a run folder, or a ``.ckpt`` inside it): the run continues with the
  config it was started with (``RUN/.hydra/config.yaml``) and writes to ``RUN`` itself. The
  config files point Hydra's run folder there too (``hydra.run.dir`` through the
  ``resume_dir`` resolver), so no second folder is made; Hydra's record of the resuming
  command goes to ``RUN/.hydra/resume`` and leaves the original one alone.
- ``resume=auto``: continue from this run's own folder if it holds a checkpoint, else start
  afresh: for a job that a cluster requeues with the same run folder.
- ``resume=null`` (default): a new run.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pretrain.callbacks.finite_loss import nonfinite, some
from pretrain.validate import ConfigError

AUTO = "auto"
LAST = Path("checkpoints") / "last.ckpt"


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
    if resume is None:
        return None
    if resume == AUTO:
        # Lightning's own SLURM requeue (SIGUSR1) leaves hpc_ckpt_N.ckpt in the run folder.
        found = [p for p in [run_dir / LAST, *Path(run_dir).glob("hpc_ckpt_*.ckpt")] if p.is_file()]
        return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None
    path = Path(resume)
    checkpoint = path if path.suffix == ".ckpt" else path / LAST
    if not checkpoint.is_file():
        missing = run_folder(resume) if not run_folder(resume).is_dir() else checkpoint
        raise ConfigError(
            f"resume={resume}: {missing} does not exist. Point resume at the folder of an interrupted run "
            f"(it holds {LAST}); a run killed before its first checkpoint cannot be resumed: start it afresh."
        )
    return str(checkpoint)


def check_resumable(checkpoint: str, model: torch.nn.Module) -> None:
    """Refuse a checkpoint that ``model`` cannot continue from, before the run writes anything: one
    that cannot be read (truncated, say), is no Lightning checkpoint, holds another model (another
    run's, or the run's config was edited since) or holds NaN or infinite weights."""
    try:
        # Memory-mapped: the weights are read from the file as they are checked, not copied into memory.
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        if zipfile.is_zipfile(checkpoint):  # torch's own reason; else it says no more than "invalid argument"
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        else:
            reason = "not a whole zip archive, as torch writes: cut short, or no checkpoint at all"
        raise ConfigError(
            f"resume: {checkpoint} cannot be read as a checkpoint ({reason}); it was damaged, e.g. by a full disk "
            "or an interrupted copy: restore a good copy of it, or start the run afresh"
        ) from None
    keys = ("state_dict", "optimizer_states", "loops", "global_step")
    if not (isinstance(state, dict) and isinstance(state.get("state_dict"), dict) and all(k in state for k in keys)):
        raise ConfigError(
            f"resume: {checkpoint} is not a checkpoint of a training run (it lacks {', '.join(keys)}); "
            "point resume at the folder of an interrupted run"
        )
    saved, expected = state["state_dict"], model.state_dict()
    shapes = [
        f"{k} {tuple(saved[k].shape)} there, {tuple(v.shape)} here"
        for k, v in expected.items()
        if isinstance(saved.get(k), torch.Tensor) and saved[k].shape != v.shape
    ]
    differences = [
        f"{what}: {some(names)}"
        for what, names in (
            ("missing", [k for k in expected if k not in saved]),
            ("not in the model", [k for k in saved if k not in expected]),
            ("of other shapes", shapes),
        )
        if names
    ]
    if differences:
        raise ConfigError(
            f"resume: {checkpoint} holds another model than the one the run's config builds ({'; '.join(differences)}):"
            " it is another run's checkpoint, or the run's .hydra/config.yaml was edited since; resume it with the "
            "config it was written with, or start afresh"
        )
    bad = nonfinite(saved)
    if bad:
        raise ConfigError(
            f"resume: {checkpoint} holds NaN or infinite weights ({some(bad)}): no run can continue from it; "
            "start the run afresh"
        )


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
