"""Reading fine-tuning results: finding ``results.json`` files and turning each into a run of a configuration."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.run.text import printable

RUN_SPECIFIC = (
    "seed",
    "data.seed",
    "resume",
    "data.root",
    "data.download",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)
"""Config keys (and key prefixes) that do not change what a run computes, or change with the seed."""

ENCODER_KEYS = ("encoder", "backbone", "reuse_blocks")
"""Replaced by the results' ``encoder_sha256`` and ``architecture``."""

REQUIRED = ("kind", "seed", "config", "architecture", "encoder_sha256")
NOT_METRICS = ("seed", "label_budget", "labels_per_class", "num_classes", "reused_blocks")
"""Numbers in a results file that describe the run, not its result."""


class ReportError(ValueError):
    """Nothing could be reported."""


@dataclass(frozen=True)
class Run:
    path: Path
    seed: int
    value: float
    key: tuple[tuple[str, str], ...]  # the configuration: sorted (flat key, JSON value) pairs
    pretrained: bool
    pretext_task: str | None
    encoder_file: str | None
    eval: str = "finetune"  # how the encoder was evaluated (results from before eval modes: fine-tuned)
    labels_per_class: float | None = None

    @property
    def settings(self) -> dict[str, str]:
        """The part of the key a pretrained run shares with its from-scratch baseline."""
        return {k: v for k, v in self.key if not k.startswith(("model.", "schedule."))}


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts as ``{"a.b": JSON of the value}``; lists stay whole values."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(tree, sort_keys=True)}


def matches_any(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def configuration_key(results: dict[str, Any], ignore: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
    """The sorted (key, value) pairs that define a run's configuration (see the module doc)."""
    pretrained = results["encoder_sha256"] is not None
    dropped = (*RUN_SPECIFIC, *ENCODER_KEYS, *ignore, *(() if pretrained else ("schedule",)))
    flat = {k: v for k, v in flatten(results["config"]).items() if not matches_any(k, dropped)}
    flat.update(flatten(results["architecture"], "model.architecture."))
    flat["model.encoder_sha256"] = json.dumps(results["encoder_sha256"])
    return tuple(sorted(flat.items()))


def find_results(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The results files under ``paths``, and a problem line for every path or run folder
    without one (a Hydra run folder is one that holds ``.hydra/config.yaml``)."""
    files, problems = [], []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(path.rglob("results.json"))
            files += found
            have = {f.parent for f in found}
            run_dirs = sorted(p.parent.parent for p in path.rglob(".hydra/config.yaml"))
            if not found and not run_dirs:
                problems.append(f"{path}: no results.json and no run folder under this folder")
            for run_dir in run_dirs:
                if run_dir not in have:
                    log = ", ".join(str(p) for p in sorted(run_dir.glob("*.log"))) or "no log"
                    problems.append(
                        f"{run_dir / 'results.json'}: missing (the run failed, was stopped or is still running; "
                        f"see {log})"
                    )
        else:
            problems.append(f"{path}: no such file or folder")
    return list(dict.fromkeys(files)), problems


def read_runs(files: Sequence[Path], metric: str, ignore: Sequence[str] = ()) -> tuple[list[Run], list[str], int]:
    """Fine-tuning runs from results files, a problem line per unreadable file, and the number
    of other (pretraining) results skipped. A metric that no results file has is a ReportError
    that lists the metrics they do have."""
    runs, problems, skipped = [], [], 0
    lacking: list[Path] = []  # fine-tuning results without the metric
    metrics: set[str] = set()  # the metrics those have instead
    known = False  # whether any results file has the metric
    for path in files:
        try:
            results = json.loads(path.read_text())
            if not isinstance(results, dict):
                raise ValueError("not a JSON object")
            if results.get("kind") == "pretrain":
                skipped += 1
                continue
            missing = [k for k in REQUIRED if k not in results]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            if results["kind"] != "finetune":
                raise ValueError(f"kind is {results['kind']!r}, not 'finetune'")
            if metric not in results:
                lacking.append(path)
                metrics.update(k for k, v in results.items() if _is_number(v) and k not in NOT_METRICS)
                continue
            known, value = True, results[metric]
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"{metric} is {value!r}, not a finite number")
            per_class = results.get("labels_per_class")
            if per_class is not None and not (_is_number(per_class) and 0 < per_class < math.inf):
                raise ValueError(f"labels_per_class is {per_class!r}, not a positive number")
            runs.append(
                Run(
                    path=path,
                    seed=int(results["seed"]),
                    value=float(value),
                    key=configuration_key(results, ignore),
                    pretrained=results["encoder_sha256"] is not None,
                    pretext_task=results.get("pretext_task"),
                    encoder_file=results.get("encoder_file"),
                    eval=str(results.get("eval", "finetune")),
                    labels_per_class=per_class,
                )
            )
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:  # JSONDecodeError is a ValueError
            problems.append(f"{path}: corrupt ({err})")
    if lacking and not known:
        have = ", ".join(printable(m) for m in sorted(metrics)) or "no metric"
        raise ReportError(f"unknown metric {metric!r}: the results have {have}; choose one with --metric")
    problems += [f"{path}: no {metric} in it" for path in lacking]
    return runs, problems, skipped


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
