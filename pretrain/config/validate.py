"""Configuration checks at start-up: every mistake found before any work is spent, in one message.

The checks are generic, so new tasks, backbones, optimizers and data modules are covered
without a schema to keep in sync:

- top-level keys are those of the primary config file (``conf/pretrain.yaml`` or
  ``conf/finetune.yaml``) and its config groups; anything else is a typo;
- a ``_target_`` may appear only where ``conf/`` declares one, with a value declared there
  (``pretrain.config.targets``): checked first, on the config as written and as resolved, so that
  nothing a config names is imported or called unless the project's own files name it too;
- every node with a ``_target_`` is checked against the signature of what it builds: each
  key must be a parameter (else "did you mean ..."), each value must fit the parameter's type
  annotation; the target must exist and be of the kind its group builds;
- ``backbone`` is checked the same way against its architecture's builder in
  ``encoders.BACKBONES``; other plain nodes against the keys and value types of the file;
- a short table of value rules (positive learning rate, batch size, epochs, ...), the data
  module's own value checks (``data.value_problems``), a task's (``PretextTask.value_problems``),
  and a command's own rules (``Checks``: fine-tuning's are in ``finetune.checks``);
- the optimizer is built once on a dummy parameter, so torch's own argument checks run now.

Checks that need the data or the encoder file (label budget, class names, input shape,
number of blocks) run right after the data is loaded and before training (``pretrain.data.module``,
``finetune.checks``).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pretrain.config.targets import CONF, undeclared_targets
from pretrain.config.typecheck import describe, fits, parameter_types
from pretrain.data.module import ImageDataModule, value_problems
from pretrain.data.sources import DATA_SETS
from pretrain.encoders import BACKBONES
from pretrain.internals import locate
from pretrain.run.faults import FaultTolerance
from pretrain.tasks.base import PretextTask


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the value and the fix."""


KINDS: dict[str, type] = {
    "data": L.LightningDataModule,
    "task": PretextTask,
    "optimizer": torch.optim.Optimizer,
    "trainer": L.Trainer,
    "faults": FaultTolerance,
    "online_eval": L.Callback,
}
"""What the ``_target_`` of each top-level group must build."""

TYPES: dict[str, Any] = {
    "seed": int,
    "resume": str | None,
}
"""Types of values outside any ``_target_`` node that may be null (the others have the type of
their value in the file)."""


def positive(v: Any) -> bool:
    return v > 0


def at_least_one(v: Any) -> bool:
    return v >= 1


Rule = tuple[str, Callable[[Any], bool], str]
"""(path, test, hint): the value at ``path``, where it is a number, passes ``test``, else "PATH=VALUE HINT"."""

RULES: list[Rule] = [
    ("seed", lambda v: 0 <= v < 2**32, "must be in 0..2**32-1 (Lightning would silently pick a random seed)"),
    ("optimizer.lr", lambda v: 0 < v < math.inf, "must be positive and finite, e.g. optimizer.lr=0.001"),
    ("trainer.gradient_clip_val", lambda v: 0 <= v < math.inf, "must be >= 0 and finite, or null: no clipping"),
    ("data.batch_size", at_least_one, "must be at least 1, e.g. data.batch_size=64"),
    ("data.eval_batch_size", at_least_one, "must be at least 1, e.g. data.eval_batch_size=1024"),
    ("data.label_budget", at_least_one, "must be at least 1 (one image per class at the very least), or null: all"),
    ("data.labels_per_class", at_least_one, "must be at least 1, or null: data.label_budget decides"),
    ("trainer.max_epochs", at_least_one, "must be at least 1, e.g. trainer.max_epochs=10"),
    ("faults.checkpoint_every_n_steps", at_least_one, "must be at least 1, or null: at epoch ends only"),
    ("faults.check_finite_every_n_steps", at_least_one, "must be at least 1"),
    ("online_eval.every_n_epochs", at_least_one, "must be at least 1, or null: no online evaluation"),
    ("online_eval.k", at_least_one, "must be at least 1, e.g. online_eval.k=20"),
    ("online_eval.temperature", positive, "must be positive, e.g. online_eval.temperature=0.07"),
    ("online_eval.max_train_images", at_least_one, "must be at least 1, or null: every training image"),
]


@dataclass(frozen=True)
class Checks:
    """A command's own checks of the keys only its config has, beside the shared ones above."""

    types: dict[str, Any] = field(default_factory=dict)
    """As ``TYPES``."""
    rules: list[Rule] = field(default_factory=list)
    """As ``RULES``."""
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Values outside any ``_target_`` node that are one of a few words."""
    across: Callable[[dict[str, Any]], list[str]] | None = None
    """The problems a check of one value cannot see: the resolved config in, one line each out."""


NO_CHECKS = Checks()
"""A command with no keys of its own."""


def validate_config(cfg: DictConfig, name: str, own: Checks = NO_CHECKS) -> None:
    """Raise one ConfigError listing every problem in ``cfg``, the composed config of
    ``python -m NAME`` (``conf/NAME.yaml``), whose own checks are ``own``."""
    _refuse_undeclared_targets(undeclared_targets(cfg))
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} has no value (???): give it one, e.g. {err.full_key}=...") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{getattr(err, 'full_key', None) or 'config'}: {getattr(err, 'msg', err)}") from None
    _refuse_undeclared_targets(undeclared_targets(plain))  # what interpolations (oc.create, ...) made of it
    problems: list[str] = []
    types = {**TYPES, **own.types}
    reference = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    known = _top_level_keys(reference)
    missing = [group for group in _required_groups(reference) if not _chosen(group, plain)]
    problems += [_missing_group(group) for group in missing]
    for key, value in plain.items():
        if key not in known:
            problems.append(f"unknown key '{key}'{did_you_mean(key, sorted(known))}")
        elif isinstance(value, dict) and "_target_" in value:
            _check_target(key, value, problems)
        elif key == "backbone":
            _check_backbone(value, problems)
        elif key in types:
            if not fits(value, types[key]):
                problems.append(f"{key}={value!r} must be {describe(types[key])}")
        elif isinstance(reference.get(key), dict) and key not in missing:  # a missing group's keys: said once
            _check_plain(key, value, reference[key], types, problems)
    _check_rules(plain, [*RULES, *own.rules], own.choices, problems)
    if own.across is not None:
        problems += own.across(plain)
    if not problems and isinstance(plain.get("optimizer"), dict):
        _dry_build_optimizer(cfg.optimizer, problems)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _refuse_undeclared_targets(problems: list[str]) -> None:
    if problems:  # alone, before any check imports a target to look at it
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _top_level_keys(reference: dict[str, Any]) -> set[str]:
    keys = {k for k in reference if k not in ("defaults", "hydra")}
    for entry in reference.get("defaults", []):
        for group in entry if isinstance(entry, dict) else []:
            group = group.split()[-1].split("@")[0]  # "optional experiment", "override x", "x@pkg"
            if not group.startswith(("hydra", "/hydra")):
                keys.add(group.lstrip("/").split("/")[0])
    return keys


def _required_groups(reference: dict[str, Any]) -> list[str]:
    """The groups a command's defaults list chooses an option of (not ``group: null`` ones)."""
    return [
        group
        for entry in reference.get("defaults", [])
        if isinstance(entry, dict)
        for group, option in entry.items()
        if option is not None
        and " " not in group
        and not group.startswith(("hydra", "/hydra"))
        and not (CONF / group / f"{option}.yaml").read_text().startswith("# @package")  # writes into another key
    ]


def _chosen(group: str, plain: dict[str, Any]) -> bool:
    """Whether an option of ``group`` is in the config (not only the command's own settings of it)."""
    return isinstance(plain.get(group), dict) and (group not in KINDS or "_target_" in plain[group])


def group_options(group: str) -> list[str]:
    """The options of config group ``group``: the files in conf/GROUP/ but those the others build on."""
    files = sorted((CONF / group).glob("*.yaml"))
    bases = {b for f in files for b in OmegaConf.load(f).get("defaults", []) if isinstance(b, str)}
    return [f.stem for f in files if f.stem not in bases]


def _missing_group(group: str) -> str:
    options = group_options(group)
    return f"{group} is missing: it is a config group, choose one of its options {options}, e.g. {group}={options[0]}"


def did_you_mean(word: str, options: Any) -> str:
    """ " (did you mean 'x'?)" for a close match, else the options (the first 12 of them)."""
    options = [str(o) for o in options]
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f"; the options are {options[:12]}{' ...' if len(options) > 12 else ''}"


def _check_target(path: str, node: dict[str, Any], problems: list[str]) -> None:
    target = node["_target_"]
    try:
        obj = locate(target)
    except Exception:  # noqa: BLE001 - Hydra raises several kinds for a path it cannot import
        problems.append(f"{path}._target_={target!r} cannot be imported: check the spelling")
        return
    kind = KINDS.get(path)
    if kind is not None and not (isinstance(obj, type) and issubclass(obj, kind)):
        problems.append(f"{path}._target_={target} is not a {kind.__module__}.{kind.__qualname__}")
        return
    if path == "optimizer" and node.get("_partial_") is not True:
        problems.append("optimizer needs _partial_: true (the model's parameters are passed in when it is built)")
    params = parameter_types(obj)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    found_before = len(problems)
    for key, value in node.items():
        if key.startswith("_") and key.endswith("_"):  # Hydra's own keys: _target_, _partial_, ...
            continue
        if path == "trainer" and key == "channels_last":  # ours, not Lightning's: pretrain.run.trainer takes it
            if not isinstance(value, bool):
                problems.append(f"trainer.channels_last={value!r} must be true or false")
            continue
        if key not in params:
            if not takes_any:
                problems.append(f"{path}.{key} is not an option of {target}{did_you_mean(key, names)}")
        elif path == "trainer" and key == "precision" and value == "mixed":
            continue  # ours, not Lightning's: pretrain.run.trainer.resolve_precision picks the real one
        elif not fits(value, params[key].annotation):
            problems.append(f"{path}.{key}={value!r} must be {describe(params[key].annotation)}")
    if isinstance(obj, type) and issubclass(obj, ImageDataModule):
        if len(problems) == found_before:  # every value of its type: judge the values, as the module will
            checked = inspect.signature(value_problems).parameters
            problems.extend(value_problems(**{k: v for k, v in node.items() if k in checked}))
        known = DATA_SETS
        if isinstance(node.get("name"), str) and node["name"] not in known:
            problems.append(f"data.name={node['name']!r} is not a data set{did_you_mean(node['name'], known)}")
    if isinstance(obj, type) and issubclass(obj, PretextTask) and len(problems) == found_before:
        checked = inspect.signature(obj.value_problems).parameters
        problems.extend(obj.value_problems(**{k: v for k, v in node.items() if k in checked}))


def _check_backbone(node: Any, problems: list[str]) -> None:
    if not isinstance(node, dict):
        problems.append(f"backbone must be a mapping with 'arch' and its options, not {node!r}")
        return
    arch = node.get("arch")
    if arch not in BACKBONES:
        known = sorted(BACKBONES)
        problems.append(f"backbone.arch={arch!r} is not an architecture{did_you_mean(str(arch), known)}")
        return
    params = parameter_types(BACKBONES[arch])
    params.pop("input_shape", None)
    for key, value in node.items():
        if key == "arch":
            continue
        if key not in params:
            problems.append(f"backbone.{key} is not an option of {arch}{did_you_mean(key, params)}")
        elif not fits(value, params[key].annotation):
            problems.append(f"backbone.{key}={value!r} must be {describe(params[key].annotation)}")


def _check_plain(path: str, node: Any, reference: dict[str, Any], types: dict[str, Any], problems: list[str]) -> None:
    """A node without a target: its keys and value types are those of the config file."""
    if not isinstance(node, dict):
        problems.append(f"{path} must be a mapping with keys {sorted(reference)}, not {node!r}")
        return
    for key, value in node.items():
        if key not in reference:
            problems.append(f"{path}.{key} is not a key of {path}{did_you_mean(key, sorted(reference))}")
            continue
        kind = types.get(f"{path}.{key}", type(reference[key]))
        if kind in (type(None), dict, list):
            continue  # neither the file nor TYPES says what it takes
        if not fits(value, kind):
            problems.append(f"{path}.{key}={value!r} must be {describe(kind)}")


def _check_rules(
    plain: dict[str, Any], rules: list[Rule], choices: dict[str, tuple[str, ...]], problems: list[str]
) -> None:
    for path, rule, hint in rules:  # None and values of the wrong type: the type checks report them
        value = select(plain, path)
        if fits(value, float) and not rule(value):
            problems.append(f"{path}={value} {hint}")
    for path, words in choices.items():
        value = select(plain, path)
        if value is not MISSING and value not in words:
            problems.append(f"{path}={value!r} must be one of {', '.join(words)}")


MISSING = object()


def select(plain: dict[str, Any], path: str) -> Any:
    node: Any = plain
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def _dry_build_optimizer(node: DictConfig, problems: list[str]) -> None:
    try:
        instantiate(node)([torch.zeros(1, requires_grad=True)])
    except Exception as err:  # noqa: BLE001 - whatever the optimizer refuses, say so now
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        problems.append(f"optimizer: {type(cause).__name__}: {cause}")


@contextlib.contextmanager
def lightning_refusals(path: str) -> Iterator[None]:
    """Report a constructor's refusal of its config (Lightning's MisconfigurationException, a
    ValueError) as a ConfigError about config node ``path``, not a traceback from inside it."""
    try:
        yield
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, MisconfigurationException | ValueError | TypeError):
            raise ConfigError(f"{path}: {cause}") from None
        raise
