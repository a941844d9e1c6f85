"""Nothing in a config chooses code to run: a ``_target_`` that ``conf/`` does not declare at its
position, in any form Hydra instantiates (a dict, a list item, ``_partial_``, ``_args_``, what
an interpolation resolves to, a group's own target replaced), is refused before anything is
imported or built; and a run folder's files (``resume=RUN``) choose nothing."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import QUIET, REPO, make_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

import finetune.__main__ as finetune_main
import pretrain.__main__ as pretrain_main
from pretrain.config.targets import declared_targets, dotted
from pretrain.config.validate import ConfigError, validate_config
from pretrain.run.resume import resumed_config

RUNS = {"pretrain": pretrain_main.run, "finetune": finetune_main.run}
# Real configs of each command; the GAN adds a nested mapping (task.optimizer_args) and a list in it.
CONFIGS = [("pretrain", ["task=gan"]), ("finetune", [])]


def payloads(marker: Path) -> dict[str, tuple[Any, str]]:
    """Each form of a node that makes Hydra call ``open(marker, "w")``, and where the refusal
    names the target, after the node's own path."""
    call = {"_target_": "builtins.open", "_args_": [str(marker), "w"]}
    created = f"{{_target_: builtins.open, _args_: [{marker}, w]}}"
    return {
        "dict": (call, "._target_="),
        "list": ([call], "[0]._target_="),
        "partial": ({**call, "_partial_": True}, "._target_="),
        "args": ({"_target_": "builtins.print", "_args_": [call]}, "._target_="),
        "interpolation": (f'${{oc.create:"{created}"}}', "._target_="),  # a target only once resolved
    }


def nodes(node: Any, at: tuple = ()) -> list[tuple[tuple, Any]]:
    found = [(at, node)]
    if isinstance(node, dict):
        found += [n for key, value in node.items() for n in nodes(value, (*at, key))]
    elif isinstance(node, list):
        found += [n for i, value in enumerate(node) for n in nodes(value, (*at, i))]
    return found


def put(container: dict, at: tuple, value: Any) -> dict:
    changed = copy.deepcopy(container)
    parent = changed
    for part in at[:-1]:
        parent = parent[part]
    parent[at[-1]] = value
    return changed


def injections(container: dict, marker: Path) -> list[tuple[str, dict, str]]:
    """(description, injected config, what the refusal names) for every node and every form:
    a new key under each mapping, each value and list item replaced, each mapping's own
    ``_target_`` and ``_args_``."""
    forms = payloads(marker)
    cases = []
    for at, node in nodes(container):
        if at[-1:] == ("_target_",):
            continue  # a group's own target: replaced below, with what the group's node holds
        targets = [(*at, "evil")] if isinstance(node, dict) else [at]
        for where in targets:
            cases += [
                (f"{dotted(where)} as {form}", put(container, where, value), dotted(where) + named)
                for form, (value, named) in forms.items()
            ]
        if isinstance(node, dict):
            touch = {**node, "_target_": "side_effect.touch", "_args_": [str(marker)]}
            cases.append(
                (
                    f"{dotted(at)}._target_",
                    put(container, at, touch) if at else touch,
                    f"{dotted((*at, '_target_'))}='side_effect.touch'",
                )
            )
            with_args = {**node, "_args_": [forms["dict"][0]]}
            cases.append(
                (
                    f"{dotted(at)}._args_",
                    put(container, at, with_args) if at else with_args,
                    f"{dotted((*at, '_args_'))}[0]._target_=",
                )
            )
    return cases


@pytest.mark.parametrize("name,overrides", CONFIGS)
def test_a_target_anywhere_conf_does_not_declare_it_is_refused_before_anything_is_built(tmp_path, name, overrides):
    marker = tmp_path / "payload-ran"
    container = OmegaConf.to_container(make_config(name, [*overrides, *QUIET]))
    cases = injections(container, marker)
    assert len(cases) > 300  # every node of the real config, in every form
    for description, injected, named in cases:
        with pytest.raises(ConfigError) as refused:
            RUNS[name](OmegaConf.create(injected), tmp_path / "run")
        assert named in str(refused.value), description
        assert not marker.exists() and not (tmp_path / "run").exists(), description


def test_the_payloads_are_live_when_nothing_checks_them(tmp_path):
    """What the property refuses would run: Hydra itself builds each of these."""
    marker = tmp_path / "payload-ran"
    for form, (value, _) in payloads(marker).items():
        if form != "partial":  # a partial runs when called, as the task's and optimizer's are
            instantiate(OmegaConf.create({"node": value}))
            assert marker.exists(), form
            marker.unlink()


def test_the_declared_targets_are_the_group_files_own():
    declared = declared_targets()
    assert declared[("optimizer",)] >= {"torch.optim.Adam", "torch.optim.SGD"}
    assert "pretrain.tasks.gan.GAN" in declared[("task",)] and declared[("data",)] == {
        "pretrain.data.module.ImageDataModule",
        "pretrain.data.stream.StreamDataModule",
    }
    groups = ("data", "task", "optimizer", "lr_schedule", "trainer", "faults", "online_eval", "hydra")
    assert not [at for at in declared if at[0] not in groups]


# --- resume=RUN: the run folder's files ------------------------------------------------------


def recorded_run(folder: Path, name: str, overrides: list[str], saved: list[str] | None = None) -> Path:
    """What Hydra records in a run folder started with ``overrides`` (its config composed from
    ``saved`` instead, where the folder's files were edited to disagree), and a checkpoint."""
    record = folder / ".hydra"
    record.mkdir(parents=True)
    OmegaConf.save(make_config(name, overrides if saved is None else saved), record / "config.yaml")
    (record / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (record / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"config_name": name}}}))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").touch()
    return folder


def resume(folder: Path, name: str = "pretrain") -> Any:
    cfg, run_dir = resumed_config(make_config(name, [f"resume={folder}"]), folder, [f"resume={folder}"], name)
    return RUNS[name](cfg, run_dir)


def override(key: str, value: Any) -> str:
    """``++key=value`` in Hydra's override syntax."""
    if isinstance(value, str):
        return f"++{key}='{value}'"
    return f"++{key}={yaml.safe_dump(value, default_flow_style=True, width=1000).strip()}"


@pytest.mark.parametrize("form", ["dict", "list", "partial", "args", "interpolation"])
def test_a_run_folder_that_records_a_target_is_refused(tmp_path, form):
    """The overrides the folder records, and its config.yaml to match: as Hydra would have
    written them for that command line."""
    marker = tmp_path / "payload-ran"
    value, named = payloads(marker)[form]
    overrides = ["trainer.max_epochs=1", override("task.optimizer.evil", value)]
    folder = recorded_run(tmp_path / "run", "pretrain", overrides)
    with pytest.raises(ConfigError) as refused:
        resume(folder)
    assert str(refused.value).startswith("invalid configuration:\n  ")
    assert f"\n  task.optimizer.evil{named}" in str(refused.value)
    assert not marker.exists()


def test_an_interpolation_of_a_node_with_a_target_is_refused_where_it_is_used():
    with pytest.raises(ConfigError, match=r"task.evil._target_='torch.optim.Adam': a config may build only"):
        validate_config(make_config("pretrain", ["++task.evil=${optimizer}"]), "pretrain")


def test_a_run_folder_that_replaces_a_groups_target_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    overrides = ["task._target_=side_effect.touch", f"++task._args_=['{marker}']"]
    folder = recorded_run(tmp_path / "run", "pretrain", overrides)
    with pytest.raises(ConfigError, match=r"task._target_='side_effect.touch' is not one of \['pretrain.tasks"):
        resume(folder)
    assert not marker.exists()


@pytest.mark.parametrize("form", ["dict", "interpolation"])
def test_an_edited_config_yaml_is_refused_naming_the_key(tmp_path, form):
    """config.yaml is not read for the run at all; one that differs from what the recorded
    overrides compose was edited (or conf/ changed since), and the run would not be the same."""
    marker = tmp_path / "payload-ran"
    value, _ = payloads(marker)[form]
    folder = recorded_run(tmp_path / "run", "pretrain", ["seed=3"], saved=["seed=3", override("task.evil", value)])
    with pytest.raises(ConfigError, match=r"config.yaml is not the config .* differs at task.evil\. Either"):
        resume(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "recorded",
    [
        ["hydra.callbacks.x={_target_:os.system,command:ls}"],
        ["hydra/launcher=submitit_local"],
        ["+task@hydra.callbacks.y=autoencoder"],
    ],
)
def test_a_run_folder_may_not_set_hydras_own_settings(tmp_path, recorded):
    folder = recorded_run(tmp_path / "run", "pretrain", [], saved=[])
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(recorded))
    with pytest.raises(ConfigError, match=r"sets Hydra's own settings \[.*\], which a run folder may not choose"):
        resume(folder)


def test_finetuning_does_not_resume_a_pretraining_run(tmp_path):
    folder = recorded_run(tmp_path / "run", "pretrain", ["task=gan"])
    message = (
        rf"^resume={folder}: that folder holds a pretraining run \(python -m pretrain\), not a fine-tuning run "
        rf"\(python -m finetune\); resume it with python -m pretrain resume={folder}$"
    )
    with pytest.raises(ConfigError, match=message):
        resume(folder, "finetune")


@pytest.mark.slow
def test_resuming_an_edited_real_run_folder_runs_nothing(tmp_path):
    """The issue's own case: torch.load of a pickle under task.optimizer in RUN/.hydra/config.yaml;
    and a target recorded in overrides.yaml with config.yaml to match."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    overrides = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", *QUIET]
    started = subprocess.run(
        [sys.executable, "-m", "pretrain", *overrides, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    marker = tmp_path / "payload-ran"
    payload = tmp_path / "payload.ckpt"
    payload.write_bytes(pickle.dumps(Payload(str(marker))))
    config = run / ".hydra" / "config.yaml"
    original = OmegaConf.load(config)

    edited = copy.deepcopy(original)
    edited.task.optimizer = {"evil": {"_target_": "torch.load", "f": str(payload), "weights_only": False}}
    OmegaConf.save(edited, config)
    resumed = subprocess.run(
        [sys.executable, "-m", "pretrain", f"resume={run}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 2 and "differs at task.optimizer. Either" in resumed.stderr.splitlines()[-1], (
        resumed.stderr
    )
    assert not marker.exists()

    injection = override("task.evil", payloads(marker)["dict"][0])
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, injection]))
    OmegaConf.save(make_config("pretrain", [*overrides, injection]), config)
    resumed = subprocess.run(
        [sys.executable, "-m", "pretrain", f"resume={run}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 2, resumed.stderr
    assert resumed.stderr.startswith("error: invalid configuration:\n  task.evil._target_='builtins.open': a config")
    assert not marker.exists()


class Payload:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return open, (self.path, "w")
