"""Shared test helpers (pytest fixtures stay in conftest.py)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def data_root() -> Path | None:
    """The real data folder: PRETEXT_DATA, else ../shared/data beside the repository."""
    for candidate in (os.environ.get("PRETEXT_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "FashionMNIST" / "raw").is_dir():
            return Path(candidate)
    return None


def make_config(name: str, overrides: list[str] = ()) -> DictConfig:
    """The config `python -m pretrain|finetune OVERRIDES` would run, composed in-process."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def hydra_command(main, argv: list[str], monkeypatch) -> int:
    """``python -m pretrain|finetune ARGV`` (``main`` of either) in this process; its exit status."""
    monkeypatch.setattr(sys, "argv", ["python", *argv])
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")  # find conf/ beside the file, as `python -m finetune` does
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    GlobalHydra.instance().clear()
    try:
        main()
        return 0
    except SystemExit as exit:
        return exit.code
    finally:
        GlobalHydra.instance().clear()
        root.handlers[:], root.level = handlers, level


def sweep_run_dir(sweep: Path, overrides: list[str]) -> Path:
    """The folder of the sweep's run with ``overrides`` (one value each, in the command line's order):
    named by them as Hydra's sweeper writes them (``false`` as ``False``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pretrain.run.run_names import run_folder_name

    parsed = OverridesParser.create().parse_overrides(overrides)
    return sweep / run_folder_name([f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in parsed], 0)
