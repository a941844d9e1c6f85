"""Which code a config may make Hydra run: only what the project's own ``conf/`` declares.

``hydra.utils.instantiate`` imports and calls the ``_target_`` of every node it builds, at any
depth: dicts, lists, ``_args_``, ``_partial_`` nodes and whatever an interpolation resolves to.
A config is data that may come from elsewhere (a run folder on shared storage, an override
recorded there), so a ``_target_`` is allowed only at a position where a file in ``conf/``
declares one, and only with a value one of them declares there: ``task`` may build the five
tasks of ``conf/task``, ``optimizer`` the optimizers of ``conf/optimizer``, and nothing else
anywhere builds anything. A new config file declares a new target, so nothing is kept in sync
by hand. The check reads only strings: nothing named in the config is imported before it passes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
TARGET = "_target_"

Position = tuple[str | int, ...]


def _package(file: Path) -> Position:
    """Where a config file's content goes in the composed config (Hydra's default package: the
    group path; ``# @package`` in the file's header says otherwise)."""
    for line in file.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.lstrip("# ").startswith("@package"):
            package = line.split("@package", 1)[1].strip()
            return () if package == "_global_" else tuple(package.split("."))
    group = file.relative_to(CONF).parent.parts
    return tuple(group)


def _targets(node: Any, at: Position) -> Iterator[tuple[Position, Any]]:
    """Every ``_target_`` in a plain container, with the position of the node that has it."""
    if isinstance(node, dict):
        if TARGET in node:
            yield at, node[TARGET]
        for key, value in node.items():
            yield from _targets(value, (*at, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, (*at, i))


@functools.cache
def declared_targets() -> dict[Position, frozenset[str]]:
    """Position in the composed config -> the targets that the files of ``conf/`` declare there."""
    declared: dict[Position, set[str]] = {}
    for file in sorted(CONF.rglob("*.yaml")):
        text = file.read_text()
        if TARGET not in text:
            continue
        content = yaml.safe_load(text) or {}
        content.pop("defaults", None)
        for at, target in _targets(content, _package(file)):
            declared.setdefault(at, set()).add(str(target))
    return {at: frozenset(targets) for at, targets in declared.items()}


def dotted(at: Position) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in at).lstrip(".")


def undeclared_targets(cfg: DictConfig | dict[str, Any]) -> list[str]:
    """One line for each ``_target_`` in ``cfg`` that ``conf/`` does not declare at its position:
    in a config as written (a DictConfig, not resolved), or as resolved (a plain dict)."""
    plain = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=False)
    declared = declared_targets()
    problems = []
    for at, target in _targets(plain, ()):
        allowed = declared.get(at, frozenset())
        if isinstance(target, str) and target in allowed:
            continue
        where = dotted((*at, TARGET))
        if allowed:
            problems.append(f"{where}={target!r} is not one of {sorted(allowed)}, the targets conf/ declares there")
        else:
            problems.append(
                f"{where}={target!r}: a config may build only what conf/ declares, and conf/ declares no "
                f"_target_ at {dotted(at) or 'the top level'}"
            )
    return sorted(set(problems))
