"""Configuration checks at start-up: every mistake found before any work is spent, in one message.

The checks are generic, so new tasks, backbones, optimizers and data modules are covered
without a schema to keep in sync:

- top-level keys are those of the primary config file (``conf/pretrain.yaml`` or
  ``conf/finetune.yaml``) and its config groups; anything else is a typo;
- a ``_target_`` may appear only where ``conf/`` declares one, with a value declared there
  (``pretrain.targets``): checked first, on the config as written and as resolved, so that
  nothing a config names is imported or called unless the project's own files name it too;
- every node with a ``_target_`` is checked against the signature of what it builds: each
  key must be a parameter (else "did you mean ..."), each value must fit the parameter's type
  annotation; the target must exist and be of the kind its group builds;
- ``backbone`` is checked the same way against its architecture's builder in
  ``encoders.BACKBONES``; other plain nodes against the keys and value types of the file;
- a short table of value rules (positive learning rate, batch size, epochs, ...), the data
  module's own value checks (``data.value_problems``), a task's (``PretextTask.value_problems``),
  and the cross-checks a signature cannot express (unfreeze epoch before the last epoch);
- the optimizer is built once on a dummy parameter, so torch's own argument checks run now.

Checks that need the data or the encoder file (label budget, class names, input shape,
number of blocks) run right after the data is loaded and before training: ``check_*`` below
and ``pretrain.data``.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pretrain.data import DATA_SETS, ImageDataModule, value_problems
from pretrain.encoders import BACKBONES, Encoder
from pretrain.faults import FaultTolerance
from pretrain.internals import locate
from pretrain.targets import CONF, undeclared_targets
from pretrain.tasks.base import PretextTask
from pretrain.typecheck import describe, fits, parameter_types


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
    "encoder": str | None,
    "reuse_blocks": int | None,
    "schedule.unfreeze_epoch": int | None,
    "schedule.unfreeze_top": int | None,
}
"""Types of values outside any ``_target_`` node that may be null (the others have the type of
their value in the file)."""


def _positive(v: Any) -> bool:
    return v > 0


def _at_least_one(v: Any) -> bool:
    return v >= 1


def _non_negative(v: Any) -> bool:
    return v >= 0


RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", lambda v: 0 <= v < 2**32, "must be in 0..2**32-1 (Lightning would silently pick a random seed)"),
    ("optimizer.lr", lambda v: 0 < v < math.inf, "must be positive and finite, e.g. optimizer.lr=0.001"),
    ("trainer.gradient_clip_val", lambda v: 0 <= v < math.inf, "must be >= 0 and finite, or null: no clipping"),
    ("data.batch_size", _at_least_one, "must be at least 1, e.g. data.batch_size=64"),
    ("data.eval_batch_size", _at_least_one, "must be at least 1, e.g. data.eval_batch_size=1024"),
    ("data.label_budget", _at_least_one, "must be at least 1 (one image per class at the very least), or null: all"),
    ("data.labels_per_class", _at_least_one, "must be at least 1, or null: data.label_budget decides"),
    ("trainer.max_epochs", _at_least_one, "must be at least 1, e.g. trainer.max_epochs=10"),
    ("faults.checkpoint_every_n_steps", _at_least_one, "must be at least 1, or null: at epoch ends only"),
    ("faults.check_finite_every_n_steps", _at_least_one, "must be at least 1"),
    ("online_eval.every_n_epochs", _at_least_one, "must be at least 1, or null: no online evaluation"),
    ("online_eval.k", _at_least_one, "must be at least 1, e.g. online_eval.k=20"),
    ("online_eval.temperature", _positive, "must be positive, e.g. online_eval.temperature=0.07"),
    ("online_eval.max_train_images", _at_least_one, "must be at least 1, or null: every training image"),
    ("reuse_blocks", _at_least_one, "must be at least 1, or null: every block of the encoder"),
    ("schedule.unfreeze_epoch", _non_negative, "must be an epoch >= 0, or null: never unfreeze"),
    ("schedule.unfreeze_top", _at_least_one, "must be at least 1, or null: unfreeze every reused block"),
    (
        "schedule.encoder_lr_factor",
        _positive,
        "must be positive (to keep blocks fixed, set schedule.unfreeze_epoch=null)",
    ),
    ("head.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("knn.k", _at_least_one, "must be at least 1, e.g. knn.k=20"),
    ("knn.temperature", _positive, "must be positive, e.g. knn.temperature=0.07"),
]

CHOICES: dict[str, tuple[str, ...]] = {
    "eval": ("finetune", "probe", "knn"),
    "knn.pool": ("mean", "flatten"),
    "head.pool": ("flatten", "mean"),
}
"""Values outside any ``_target_`` node that are one of a few words."""


def validate_config(cfg: DictConfig, name: str) -> None:
    """Raise one ConfigError listing every problem in ``cfg``, the composed config of
    ``python -m NAME`` (``pretrain`` or ``finetune``)."""
    _refuse_undeclared_targets(undeclared_targets(cfg))
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} has no value (???): give it one, e.g. {err.full_key}=...") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{getattr(err, 'full_key', None) or 'config'}: {getattr(err, 'msg', err)}") from None
    _refuse_undeclared_targets(undeclared_targets(plain))  # what interpolations (oc.create, ...) made of it
    problems: list[str] = []
    reference = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    known = _top_level_keys(reference)
    missing = [group for group in _required_groups(reference) if not _chosen(group, plain)]
    problems += [_missing_group(group) for group in missing]
    for key, value in plain.items():
        if key not in known:
            problems.append(f"unknown key '{key}'{_did_you_mean(key, sorted(known))}")
        elif isinstance(value, dict) and "_target_" in value:
            _check_target(key, value, problems)
        elif key == "backbone":
            _check_backbone(value, problems)
        elif key in TYPES:
            if not fits(value, TYPES[key]):
                problems.append(f"{key}={value!r} must be {describe(TYPES[key])}")
        elif isinstance(reference.get(key), dict) and key not in missing:  # a missing group's keys: said once
            _check_plain(key, value, reference[key], problems)
    _check_rules(plain, problems)
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


def _did_you_mean(word: str, options: Any) -> str:
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
        if path == "trainer" and key == "channels_last":  # ours, not Lightning's: pretrain.trainer takes it
            if not isinstance(value, bool):
                problems.append(f"trainer.channels_last={value!r} must be true or false")
            continue
        if key not in params:
            if not takes_any:
                problems.append(f"{path}.{key} is not an option of {target}{_did_you_mean(key, names)}")
        elif path == "trainer" and key == "precision" and value == "mixed":
            continue  # ours, not Lightning's: pretrain.trainer.resolve_precision picks the real one
        elif not fits(value, params[key].annotation):
            problems.append(f"{path}.{key}={value!r} must be {describe(params[key].annotation)}")
    if isinstance(obj, type) and issubclass(obj, ImageDataModule):
        if len(problems) == found_before:  # every value of its type: judge the values, as the module will
            checked = inspect.signature(value_problems).parameters
            problems.extend(value_problems(**{k: v for k, v in node.items() if k in checked}))
        known = DATA_SETS
        if isinstance(node.get("name"), str) and node["name"] not in known:
            problems.append(f"data.name={node['name']!r} is not a data set{_did_you_mean(node['name'], known)}")
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
        problems.append(f"backbone.arch={arch!r} is not an architecture{_did_you_mean(str(arch), known)}")
        return
    params = parameter_types(BACKBONES[arch])
    params.pop("input_shape", None)
    for key, value in node.items():
        if key == "arch":
            continue
        if key not in params:
            problems.append(f"backbone.{key} is not an option of {arch}{_did_you_mean(key, params)}")
        elif not fits(value, params[key].annotation):
            problems.append(f"backbone.{key}={value!r} must be {describe(params[key].annotation)}")


def _check_plain(path: str, node: Any, reference: dict[str, Any], problems: list[str]) -> None:
    """A node without a target: its keys and value types are those of the config file."""
    if not isinstance(node, dict):
        problems.append(f"{path} must be a mapping with keys {sorted(reference)}, not {node!r}")
        return
    for key, value in node.items():
        if key not in reference:
            problems.append(f"{path}.{key} is not a key of {path}{_did_you_mean(key, sorted(reference))}")
            continue
        kind = TYPES.get(f"{path}.{key}", type(reference[key]))
        if kind in (type(None), dict, list):
            continue  # neither the file nor TYPES says what it takes
        if not fits(value, kind):
            problems.append(f"{path}.{key}={value!r} must be {describe(kind)}")


def _check_rules(plain: dict[str, Any], problems: list[str]) -> None:
    for path, rule, hint in RULES:  # None and values of the wrong type: the type checks report them
        value = _select(plain, path)
        if fits(value, float) and not rule(value):
            problems.append(f"{path}={value} {hint}")
    for path, choices in CHOICES.items():
        value = _select(plain, path)
        if value is not _MISSING and value not in choices:
            problems.append(f"{path}={value!r} must be one of {', '.join(choices)}")
    epochs, unfreeze = _select(plain, "trainer.max_epochs"), _select(plain, "schedule.unfreeze_epoch")
    from_scratch = str(plain.get("encoder")).lower() == "none"  # nothing reused, so no schedule
    scheduled = plain.get("eval", "finetune") == "finetune"  # a probe never unfreezes; k-NN does not train
    unfreezes = scheduled and not from_scratch and isinstance(unfreeze, int)
    if unfreezes and isinstance(epochs, int) and unfreeze >= epochs >= 1:
        problems.append(
            f"schedule.unfreeze_epoch={unfreeze} is not before the last epoch (trainer.max_epochs={epochs} trains "
            f"epochs 0..{epochs - 1}), so the reused blocks would never be unfrozen: use 0..{epochs - 1}, or null to "
            "keep them frozen throughout (a linear probe)"
        )


_MISSING = object()


def _select(plain: dict[str, Any], path: str) -> Any:
    node: Any = plain
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
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


# --- checks that need the data or the encoder --------------------------------------------


def check_encoder_fits_data(encoder: Encoder, datamodule: L.LightningDataModule, source: str) -> None:
    """The encoder takes images of the data's shape (C, H, W), or a ConfigError says how to fix it.

    Runs before ``datamodule.setup`` where the data module can tell its image shape
    (``ImageDataModule.image_shape``); other data modules fail later, at their first batch."""
    if not hasattr(datamodule, "image_shape"):
        return
    want, have = tuple(encoder.input_shape), tuple(datamodule.image_shape())
    name = getattr(datamodule, "name", type(datamodule).__name__)
    if want == have:
        return
    if want[0] != have[0]:
        fix = (
            f"set data.grayscale={'true' if want[0] == 1 else 'false'} for folder data, or fine-tune on "
            "data of the encoder's kind"
        )
        what = f"{want[0]} channel(s), but data={name} has {have[0]}"
    else:
        fix = f"set data.image_size=[{want[1]},{want[2]}] for folder data, or fine-tune on data of the encoder's kind"
        what = f"{want[1]}x{want[2]} images, but data={name} has {have[1]}x{have[2]}"
    raise ConfigError(f"encoder {source} takes {what} (shapes {want} and {have}, C, H, W): {fix}")


def check_reuse(cfg: DictConfig, encoder: Encoder) -> int:
    """The number of blocks to reuse (``reuse_blocks``, default all), checked against the encoder
    and against ``schedule.unfreeze_top``."""
    depth = len(encoder)
    reuse = cfg.reuse_blocks if cfg.reuse_blocks is not None else depth
    if reuse > depth:
        raise ConfigError(
            f"reuse_blocks={reuse}, but the {encoder.arch} encoder has {depth} block(s) "
            f"({', '.join(encoder.block_names)}): choose 1..{depth}, or null for all"
        )
    top = cfg.schedule.unfreeze_top
    if top is not None and top > reuse:
        raise ConfigError(
            f"schedule.unfreeze_top={top}, but only {reuse} block(s) are reused: choose 1..{reuse}, or null for all"
        )
    return reuse
