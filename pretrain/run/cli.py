"""The command-line face of ``python -m pretrain`` and ``python -m finetune``: resuming, one clear
message per error, exit statuses, one run per folder, and no run folder left behind by a run
that never started.

Errors in what the user gave (command line, config, data, encoder file, checkpoint, a folder
another run holds) print ``error: MESSAGE`` and exit with status 2; a run stopped by a NaN loss
exits with 1, a run stopped by SIGTERM with 143 (128 + 15, as if the signal had killed it) after
saving its checkpoint, a run that found its disk full with 74 (``EX_IOERR`` of sysexits.h:
neither the input nor the run is at fault, and the checkpoint it had is intact, so it can be
resumed once there is space). With ``HYDRA_FULL_ERROR=1`` the exception is raised with its
whole traceback instead, and under ``--multirun`` it is raised for the sweep to handle.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from pretrain.config.compose import explain, explain_value_error
from pretrain.config.validate import CONF, NO_CHECKS, Checks, ConfigError
from pretrain.data.images import DataError
from pretrain.encoder_file.format import EncoderFileError
from pretrain.encoders import EncoderError
from pretrain.internals import args_parser
from pretrain.run.callbacks.finite_loss import NonFiniteLossError
from pretrain.run.files import NoSpaceError, no_space_cause
from pretrain.run.hydra_ddp import rank_processes_rerun_this_job
from pretrain.run.resume import (
    AUTO,
    LAST,
    checkpoint_to_resume,
    finished_before_restart,
    resumable,
    resumed_config,
    run_folder,
    slurm_restarts,
)
from pretrain.run.run_folder import LOCK, RunFolderError, hold, release
from pretrain.run.run_names import run_folder_name  # noqa: F401 - registers the resolver of hydra.sweep.subdir
from pretrain.run.text import printable

INPUT_ERRORS = (ConfigError, DataError, EncoderError, EncoderFileError, RunFolderError)
EX_IOERR = 74
SHARED_CODE = Path(__file__).resolve().parents[1]  # the package every command builds on
FULL_ERROR = "HYDRA_FULL_ERROR"
_composing = False  # FULL_ERROR is ours: set while Hydra composes the config for ``command``
_own_checks: dict[str, Checks] = {}  # each command's own config checks, by its config name


def command(name: str, run: Callable[[DictConfig, Path], Any], own: Checks = NO_CHECKS) -> Callable[[], None]:
    """``python -m NAME``: compose ``conf/NAME.yaml`` with the command line and call
    ``run(cfg, run_dir)`` (see ``run_command``); ``own``: the command's own config checks.

    Hydra refuses a mistyped key, group or option itself, before any of our code runs, with a
    message that suggests the wrong fix (``+data.batchsize=32``) and exit 1. Unless
    HYDRA_FULL_ERROR is set: then it raises the error. So it is set while Hydra composes, our
    words for the error are printed (``pretrain.config.compose.explain``), and ``CommandStart`` unsets
    it once the composition has passed, for everything after to be reported as before."""

    _own_checks[name] = own

    # An absolute path: the console script `pretrain` imports the package, where Hydra would
    # read a relative path as a Python module name.
    @hydra.main(version_base="1.3", config_path=str(CONF), config_name=name)
    def hydra_main(cfg: DictConfig) -> None:
        with rank_processes_rerun_this_job():
            run_command(cfg, run)

    def main() -> None:
        global _composing
        if FULL_ERROR in os.environ:  # the user's own setting
            hydra_main()
            return
        os.environ[FULL_ERROR], _composing = "1", True
        try:
            hydra_main()
        except CompactHydraException as err:  # Hydra's refusal of the command line: nothing is written yet
            args = args_parser().parse_args()
            refuse(explain(err, args.config_name or name, args.overrides, own))
        except ValueError as err:
            if not _composing:  # raised past our own reporting: not a composition error
                raise
            refuse(explain_value_error(err, args_parser().parse_args().overrides))
        finally:
            composed()

    return main


def explain_refusal(err: CompactHydraException, name: str, overrides: list[str]) -> str:
    """Our words for Hydra's refusal of ``overrides`` in composing ``conf/NAME.yaml``, with that command's
    own checks (for a sweep's runs, composed by the sweeper)."""
    return explain(err, name, overrides, _own_checks.get(name, NO_CHECKS))


def composed() -> None:
    """The composition is over: Hydra reports errors its own way again."""
    global _composing
    if _composing:
        os.environ.pop(FULL_ERROR, None)
        _composing = False


class CommandStart(Callback):
    """Runs right after Hydra composed the command's config, before it writes anything: takes the
    run's (or sweep's) folder (``pretrain.run.run_folder``). Configured in ``hydra.callbacks``."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        composed()
        folder, resume = Path(OmegaConf.select(config, "hydra.run.dir")), config.get("resume")
        resumes = resume not in (None, AUTO)
        try:
            if resumes and not run_folder(resume).is_dir():
                checkpoint_to_resume(resume, run_folder(resume))  # says so, and nothing is made
            # The folder Hydra selects next (${now:...} resolves once); a job SLURM restarted continues its own.
            hold(folder, new_run=resume is None and slurm_restarts() == 0)
            if resumes:  # before Hydra writes its record of this command there
                resumable(resume, config.hydra.job.config_name)
        except (ConfigError, RunFolderError) as err:
            release(folder, remove=True)
            refuse(err)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        composed()
        try:
            hold(Path(OmegaConf.select(config, "hydra.sweep.dir")), config.get("resume") is None, "multirun.yaml")
        except RunFolderError as err:
            refuse(err)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(Path(OmegaConf.select(config, "hydra.run.dir")))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(Path(OmegaConf.select(config, "hydra.sweep.dir")))


def refuse(error: BaseException | str) -> NoReturn:
    """The command's answer to bad input: ``error: ...`` and exit status 2."""
    message = printable(error, keep="\n")  # messages may quote files: no escape sequence reaches the terminal
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run_command(cfg: DictConfig, run: Callable[[DictConfig, Path], Any]) -> None:
    """Run ``run(cfg, run_dir)`` inside ``@hydra.main`` as a command."""
    composed()
    hydra = HydraConfig.get()
    hydra_dir = Path(hydra.runtime.output_dir)
    try:  # a multirun's job takes its folder here; a run has taken it before Hydra wrote there
        hold(hydra_dir, new_run=False)
    except RunFolderError as err:
        if hydra.mode == RunMode.MULTIRUN:
            raise
        refuse(err)  # the folder, and what is in it, is the other run's
    before = _files(hydra_dir)
    run_dir = hydra_dir
    try:
        cfg, run_dir = resumed_config(cfg, hydra_dir, list(hydra.overrides.task), hydra.job.config_name)
        hold(run_dir, new_run=False)
        if finished_before_restart(cfg.get("resume"), run_dir):
            print(f"SLURM restarted this job after its run had ended: {run_dir} is left as it is", file=sys.stderr)
            return
        run(cfg, run_dir)
    except SIGTERMException:
        if hydra.mode == RunMode.MULTIRUN:
            raise
        print(f"stopped by SIGTERM; continue with: python -m {hydra.job.config_name} resume={run_dir}", file=sys.stderr)
        sys.exit(143)
    except Exception as err:
        error = _reported(err, run_dir, _our_code(run))
        if error is None or hydra.mode == RunMode.MULTIRUN:
            raise
        if not isinstance(error, (NonFiniteLossError, NoSpaceError)):
            _remove_if_only_hydra_wrote(hydra_dir, before)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = printable(error, keep="\n")  # messages may quote files: no escape sequence reaches the terminal
        if isinstance(error, NoSpaceError):
            print(f"error: {message}: {_after_no_space(run_dir, hydra.job.config_name)}", file=sys.stderr)
            sys.exit(EX_IOERR)
        if isinstance(error, NonFiniteLossError):
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)
        refuse(error)
    finally:  # a sweep runs its jobs one after another in one process
        release(run_dir)
        release(hydra_dir)


def _our_code(run: Callable[[DictConfig, Path], Any]) -> tuple[str, ...]:
    """The folders of our code: the shared package, and the package of the command that ``run`` belongs to."""
    command = Path(inspect.getfile(run)).resolve().parent
    return tuple(str(folder) + os.sep for folder in {SHARED_CODE, command})


def _reported(err: BaseException, run_dir: Path | None = None, ours: tuple[str, ...] = ()) -> BaseException | None:
    """The error to report in one line: ours, a full disk, or a ValueError raised on purpose by
    our code (a task refusing a backbone, say); None for anything else, which keeps its traceback."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, (*INPUT_ERRORS, NonFiniteLossError, NoSpaceError)):
        return err
    cause = no_space_cause(err)  # from a write not through files.atomic_write (a log, say)
    if cause is not None:
        return NoSpaceError(cause.filename or run_dir or "the run folder")
    if isinstance(err, ValueError) and err.__traceback__ is not None:
        tb = err.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        if str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(ours):
            return err
    return None


def _after_no_space(run_dir: Path, command: str) -> str:
    """What to do after a full disk: the run's checkpoint, if it has one, is whole (atomic writes)."""
    if (run_dir / LAST).is_file():
        return (
            f"{run_dir / LAST} from before is intact; free space there and continue with: "
            f"python -m {command} resume={run_dir}"
        )
    return "free space there, or point hydra.run.dir at a disk with room, and run again"


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


def _remove_if_only_hydra_wrote(folder: Path, hydra_files: set[Path]) -> None:
    """A run refused at start-up leaves no folder: remove ``folder`` if it holds nothing but what
    Hydra wrote before the run (its .hydra record and log), and then its empty parents."""
    if not folder.is_dir() or _files(folder) - hydra_files:
        return
    if any(p.name not in (f"{HydraConfig.get().job.name}.log", LOCK) and ".hydra" not in p.parts for p in hydra_files):
        return  # a folder that held more than Hydra's record before this run (e.g. resume=): keep
    release(folder, remove=True)
    for path in hydra_files:
        path.unlink(missing_ok=True)
    folder = folder.resolve()
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        path.rmdir()
    folder.rmdir()
    cwd = Path.cwd().resolve()
    for parent in folder.parents:  # outputs/pretrain/DATE left empty by the first run of the day
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()
