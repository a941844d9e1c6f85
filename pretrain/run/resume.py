"""``resume=RUN``: continue an interrupted run in its own folder, from ``RUN/checkpoints/last.ckpt``.

- ``resume=RUN`` (a run folder, or a ``.ckpt`` inside it): the run continues with the
  config it was started with (composed again from ``conf/`` and the overrides recorded in
  ``RUN/.hydra/overrides.yaml``: see ``resumed_config``) and writes to ``RUN`` itself. The
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
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pretrain.config.compose import compose_config, explain
from pretrain.config.validate import ConfigError
from pretrain.run.callbacks.finite_loss import nonfinite, some

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


def finished_before_restart(resume: str | None, run_dir: Path) -> bool:
    """Whether SLURM restarted the job of a run that had already ended: its ``results.json`` is
    newer than its last checkpoint. (A signal to requeue can come while the run writes its results.)"""
    if resume not in (None, AUTO) or slurm_restarts() == 0:
        return False
    results, last = Path(run_dir) / RESULTS, Path(run_dir) / LAST
    return results.is_file() and (not last.is_file() or results.stat().st_mtime_ns >= last.stat().st_mtime_ns)


def resumed_config(cfg: DictConfig, hydra_dir: Path, overrides: list[str], name: str) -> tuple[DictConfig, Path]:
    """The config and folder ``python -m NAME`` runs with: with ``resume=RUN``, RUN's config (the
    command line may add nothing else but Hydra options) and RUN; otherwise ``cfg`` and Hydra's folder.

    RUN may be anyone's folder, so nothing in it is code or chooses code: its config is composed
    again from ``conf/`` and the overrides it records, and ``validate_config`` then allows only
    the targets ``conf/`` declares (``pretrain.config.targets``). Its ``config.yaml`` must match that
    composition: else it was edited, or ``conf/`` changed since, and the run would not continue
    as it started."""
    resume = cfg.get("resume")
    if resume in (None, AUTO):
        return cfg, hydra_dir
    extra = [o for o in overrides if not o.lstrip("+~").startswith(("resume=", "hydra.", "hydra/"))]
    if extra:
        raise ConfigError(
            f"resume={resume} continues that run with the config it was started with; "
            f"the other overrides {extra} would change it: drop them, or start a new run"
        )
    folder = resumable(resume, name)
    record = folder / ".hydra"
    recorded = _recorded_overrides(resume, record / "overrides.yaml")
    try:
        composed = compose_config(name, [*recorded, f"resume={resume}"])
    except CompactHydraException as err:
        raise ConfigError(
            f"resume={resume}: the overrides recorded in {record / 'overrides.yaml'} do not compose: "
            f"{explain(err, name, recorded)}"
        ) from None
    try:
        saved = OmegaConf.to_container(OmegaConf.load(record / "config.yaml"))
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"resume={resume}: {record / 'config.yaml'} is not a config: {err}") from None
    differ = _differences(saved, OmegaConf.to_container(composed), ())
    if differ:
        raise ConfigError(
            f"resume={resume}: {record / 'config.yaml'} is not the config that conf/ and the run's recorded "
            f"overrides ({record / 'overrides.yaml'}) compose; it differs at {', '.join(differ[:8])}"
            f"{' ...' if len(differ) > 8 else ''}. Either the file was edited, or conf/ changed since the run "
            "started: a resumed run would not continue as it began, so start a new run"
        )
    return composed, folder


def resumable(resume: str, name: str) -> Path:
    """The folder of run ``resume``, if it holds a run of ``python -m NAME`` to resume (read only)."""
    folder = run_folder(resume)
    record = folder / ".hydra"
    checkpoint_to_resume(resume, folder)  # the folder and its checkpoint exist
    if not (record / "config.yaml").is_file() or not (record / "overrides.yaml").is_file():
        raise ConfigError(
            f"resume={resume}: {folder} is not the folder of a run started from the command line "
            f"(it has no .hydra/config.yaml and .hydra/overrides.yaml); point resume at outputs/.../DATE/TIME "
            "of the interrupted run"
        )
    # A fine-tuning command does not resume a pretraining run, nor the other way round.
    try:
        started_by = OmegaConf.select(OmegaConf.load(record / "hydra.yaml"), "hydra.job.config_name")
    except (OSError, OmegaConfBaseException, yaml.YAMLError, ValueError):
        return folder  # no record of the command: the composition finds what does not fit
    kinds = {"pretrain": "a pretraining run (python -m pretrain)", "finetune": "a fine-tuning run (python -m finetune)"}
    if started_by != name and started_by in kinds:
        raise ConfigError(
            f"resume={resume}: that folder holds {kinds[started_by]}, not {kinds.get(name, name)}; "
            f"resume it with python -m {started_by} resume={resume}"
        )
    return folder


def _recorded_overrides(resume: str, path: Path) -> list[str]:
    """The overrides a run was started with, as RUN/.hydra/overrides.yaml records them: values
    only, never Hydra's own settings (its callbacks, launcher, search path are code and files)."""
    try:
        recorded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"resume={resume}: {path} cannot be read: {err}") from None
    recorded = [] if recorded is None else recorded
    if not isinstance(recorded, list) or not all(isinstance(o, str) for o in recorded):
        raise ConfigError(f"resume={resume}: {path} is not a list of overrides")
    try:
        parsed = OverridesParser.create().parse_overrides(recorded)
    except CompactHydraException as err:
        raise ConfigError(f"resume={resume}: {path}: {err}") from None
    # hydra.x=..., hydra/launcher=..., group@hydra.x=...: Hydra's config, not the run's
    hydra = [
        o.input_line
        for o in parsed
        if any(re.split(r"[./]", p)[0] == "hydra" for p in (o.key_or_group, o.package or ""))
    ]
    if hydra:
        raise ConfigError(
            f"resume={resume}: {path} sets Hydra's own settings {hydra}, which a run folder may not choose; "
            "a run started from the command line records none there"
        )
    return [o.input_line for o in parsed if o.key_or_group != "resume"]


def _differences(saved: Any, composed: Any, at: tuple[str, ...]) -> list[str]:
    """The key paths where two plain configs differ (``resume`` aside: the resuming command sets it)."""
    if at == ("resume",):
        return []
    if isinstance(saved, dict) and isinstance(composed, dict):
        keys = sorted(saved.keys() | composed.keys(), key=str)
        return [d for k in keys for d in _differences(saved.get(k, _ABSENT), composed.get(k, _ABSENT), (*at, str(k)))]
    if isinstance(saved, list) and isinstance(composed, list) and len(saved) == len(composed):
        return [
            d for i, (s, c) in enumerate(zip(saved, composed, strict=True)) for d in _differences(s, c, (*at, str(i)))
        ]
    same = type(saved) is type(composed) and (saved == composed or saved != saved and composed != composed)  # NaN
    return [] if same else [".".join(at) or "the whole config"]


_ABSENT = object()
