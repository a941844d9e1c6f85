"""Runs grouped into configurations, named, and each pretrained one paired with its from-scratch runs."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.report.collect import ReportError, Run
from finetune.report.stats import Summary, paired_p_value, summarize
from pretrain.run.text import printable


@dataclass
class Configuration:
    key: tuple[tuple[str, str], ...]
    runs: list[Run]
    label: str = ""
    by_seed: dict[int, float] = field(default_factory=dict)  # one value per seed (duplicates averaged)
    summary: Summary | None = None
    baseline: Configuration | None = None
    seeds: list[int] = field(default_factory=list)  # the paired seeds
    diffs: list[float] = field(default_factory=list)  # this minus baseline, per paired seed
    diff: Summary | None = None
    p_value: float = math.nan

    @property
    def pretrained(self) -> bool:
        return self.runs[0].pretrained


@dataclass
class Report:
    metric: str
    configurations: list[Configuration]
    problems: list[str]  # missing or corrupt results files
    warnings: list[str]
    skipped: int  # pretraining results


def shortened(value: str) -> str:
    """A JSON value as it reads on the command line: strings without their quotes."""
    loaded = json.loads(value)
    return loaded if isinstance(loaded, str) else value


def _encoder_names(configs: list[Configuration]) -> dict[int, str]:
    """The pretext task, plus as much of the encoder file's path as tells apart encoders of
    the same task (or the start of their SHA-256 where the path is the same)."""
    by_task: dict[str, list[Configuration]] = defaultdict(list)
    for c in configs:
        if c.pretrained:
            by_task[c.runs[0].pretext_task or "pretrained"].append(c)
    names = {}
    for task, group in by_task.items():
        encoders = {dict(c.key)["model.encoder_sha256"]: c.runs[0].encoder_file or "" for c in group}
        parts = {sha: Path(f).parts for sha, f in encoders.items()}
        depth = 1
        while depth < max(map(len, parts.values())) and len({p[-depth:] for p in parts.values()}) < len(parts):
            depth += 1
        for c in group:
            sha = dict(c.key)["model.encoder_sha256"]
            if len(encoders) == 1:
                names[id(c)] = task
            elif len({p[-depth:] for p in parts.values()}) == len(parts):
                names[id(c)] = f"{task} ({'/'.join(parts[sha][-depth:])})"
            else:
                names[id(c)] = f"{task} ({shortened(sha)[:8]})"
    return names


def baseline_name(eval_mode: str) -> str:
    """What encoder=none is under an evaluation mode: trained from scratch, or random weights left as they are."""
    return "scratch" if eval_mode == "finetune" else "random weights"


def name_configurations(configs: list[Configuration]) -> None:
    """Short distinct names: the encoder's (or the baseline's), then every setting that is not the
    same in all configurations (a key a configuration lacks counts as a value)."""
    names = _encoder_names(configs)
    keys = {k for c in configs for k, _ in c.key}
    varying = []
    for k in sorted(keys - {"model.encoder_sha256"}):
        # The schedule is not part of a from-scratch configuration: compare it among the others.
        relevant = [c for c in configs if c.pretrained or not k.startswith("schedule.")]
        if len({dict(c.key).get(k) for c in relevant}) > 1:
            varying.append(k)
    for c in configs:
        own = dict(c.key)
        extra = [f"{k.removeprefix('model.')}={shortened(own[k])}" for k in varying if k in own]
        c.label = ", ".join([names.get(id(c)) or baseline_name(c.runs[0].eval), *extra])
    seen: dict[str, int] = defaultdict(int)
    for c in configs:  # keys that differ only in ways the label cannot show
        seen[c.label] += 1
        if seen[c.label] > 1:
            c.label += f" #{seen[c.label]}"


def _architecture(c: Configuration) -> dict[str, str]:
    return {k: v for k, v in c.key if k.startswith("model.architecture.")}


def _closest_difference(config: Configuration, scratch: list[Configuration]) -> str:
    if not scratch:
        return "there are no from-scratch runs (encoder=none) at all"
    mine = config.runs[0].settings | _architecture(config)
    best: tuple[Configuration, list[str]] | None = None
    for s in scratch:
        theirs = s.runs[0].settings | _architecture(s)
        diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if best is None or len(diff) < len(best[1]):
            best = (s, diff)
    s, diff = best
    theirs = s.runs[0].settings | _architecture(s)
    shown = "; ".join(f"{k}: {mine.get(k, '-')} here, {theirs.get(k, '-')} there" for k in diff[:4])
    return f"the closest from-scratch runs ({s.label}) differ in {shown} (--ignore KEY leaves a key out)"


def build_report(runs: Sequence[Run], metric: str, min_seeds: int = 5, problems: Sequence[str] = ()) -> Report:
    """Group runs into configurations, summarize them, and pair each pretrained configuration
    with the from-scratch configuration of the same settings and architecture."""
    if not runs:
        raise ReportError("no fine-tuning results to report" + "".join(f"\n  {printable(p)}" for p in problems))
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.key].append(r)
    configs = [Configuration(key, sorted(rs, key=lambda r: (r.seed, str(r.path)))) for key, rs in groups.items()]
    configs.sort(key=lambda c: (c.pretrained, c.runs[0].pretext_task or "", c.key))
    name_configurations(configs)
    notes: list[str] = []
    for c in configs:
        seeds: dict[int, list[Run]] = defaultdict(list)
        for r in c.runs:
            seeds[r.seed].append(r)
        for seed, rs in seeds.items():
            if len(rs) > 1:
                notes.append(
                    f"{c.label}: seed {seed} was run {len(rs)} times ({', '.join(str(r.path) for r in rs)}); "
                    "their mean counts once"
                )
        c.by_seed = {s: float(np.mean([r.value for r in rs])) for s, rs in sorted(seeds.items())}
        c.summary = summarize(list(c.by_seed.values()))

    scratch = [c for c in configs if not c.pretrained]
    for c in (c for c in configs if c.pretrained):
        for s in scratch:  # at most one: same settings and architecture make the same scratch key
            if s.runs[0].settings == c.runs[0].settings and _architecture(s) == _architecture(c):
                c.baseline = s
        if c.baseline is None:
            notes.append(
                f"{c.label}: no from-scratch baseline with the same settings and architecture: "
                f"{_closest_difference(c, scratch)}"
            )
            continue
        c.seeds = sorted(c.by_seed.keys() & c.baseline.by_seed.keys())
        c.diffs = [c.by_seed[s] - c.baseline.by_seed[s] for s in c.seeds]
        unpaired = sorted(c.by_seed.keys() ^ c.baseline.by_seed.keys())
        if unpaired:
            notes.append(f"{c.label}: seeds {unpaired} have no partner run and are left out of the comparison")
        if not c.seeds:
            notes.append(f"{c.label}: no seed in common with {c.baseline.label}: nothing to compare")
            continue
        c.diff = summarize(c.diffs)
        c.p_value = paired_p_value(c.diffs)
        if len(c.seeds) < min_seeds:
            notes.append(
                f"{c.label} vs {c.baseline.label}: only {len(c.seeds)} paired seed(s): too few to say whether "
                f"pretraining helped; run at least {min_seeds} (e.g. seed='range(10)')"
            )
    compared = {id(c) for c in configs if c.diff} | {id(c.baseline) for c in configs if c.diff}
    for c in configs:  # a comparison's warning covers its two configurations
        if id(c) not in compared and c.summary.n < min_seeds:
            notes.append(f"{c.label}: only {c.summary.n} seed(s); use at least {min_seeds} for a usable interval")
    return Report(metric, configs, list(problems), notes, 0)
