"""``python -m finetune.report PATH...``: did pretraining help, over many seeds?

Reads the ``results.json`` of fine-tuning runs (files, run folders or whole sweeps), groups
the runs into configurations (everything but the seed), and reports per configuration the
number of runs, mean, standard deviation and 95% confidence interval of the mean (Student's
t); and for every pretrained configuration, the paired difference to the from-scratch
runs with the same settings and architecture, seed by seed, with its 95% interval and a
paired t-test's p-value. Writes ``report.md``, ``report.csv`` (one row per configuration),
``runs.csv`` (one row per run) and ``report.png`` (every seed a point). Runs over several label
budgets or evaluation modes (``experiment=protocol``) are laid out as the evaluation protocol's
curves instead (``finetune.protocol_report``).

What makes two runs the same configuration: their resolved configs, less

- the seed and what follows from it (``seed``, ``data.seed``);
- what says where or how a run ran, not what it computed (``RUN_SPECIFIC``);
- the encoder file's path, the ``backbone`` group and ``reuse_blocks``: the runs' own record of
  the encoder's content (SHA-256) and of the architecture that was trained stands for them,
  so moved or copied encoder files still group together, and different encoders never do;
- for from-scratch runs, the ``schedule`` (nothing is frozen without an encoder).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from pretrain.run.files import atomic_write, write_text
from pretrain.run.text import markdown_text, printable

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
CONFIDENCE = 0.95


class ReportError(ValueError):
    """Nothing could be reported."""


# --- reading ---------------------------------------------------------------------------------


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


def _matches(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def configuration_key(results: dict[str, Any], ignore: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
    """The sorted (key, value) pairs that define a run's configuration (see the module doc)."""
    pretrained = results["encoder_sha256"] is not None
    dropped = (*RUN_SPECIFIC, *ENCODER_KEYS, *ignore, *(() if pretrained else ("schedule",)))
    flat = {k: v for k, v in flatten(results["config"]).items() if not _matches(k, dropped)}
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


# --- statistics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); nan for one value
    ci_low: float  # the 95% confidence interval of the mean (t distribution); nan for one value
    ci_high: float


def summarize(values: Sequence[float]) -> Summary:
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_p_value(diffs: Sequence[float]) -> float:
    """Two-sided p-value of a paired t-test (a one-sample t-test of the differences against 0);
    nan with fewer than two pairs or differences that are all equal."""
    if len(diffs) < 2 or np.ptp(diffs) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # precision warnings for nearly equal values
        return float(stats.ttest_1samp(diffs, 0.0).pvalue)


# --- grouping --------------------------------------------------------------------------------


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


def _shown(value: str) -> str:
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
                names[id(c)] = f"{task} ({_shown(sha)[:8]})"
    return names


def baseline_name(eval_mode: str) -> str:
    """What encoder=none is under an evaluation mode: trained from scratch, or random weights left as they are."""
    return "scratch" if eval_mode == "finetune" else "random weights"


def _labels(configs: list[Configuration]) -> None:
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
        extra = [f"{k.removeprefix('model.')}={_shown(own[k])}" for k in varying if k in own]
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
    _labels(configs)
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


# --- writing ---------------------------------------------------------------------------------


def _is_fraction(metric: str) -> bool:
    return metric.endswith("acc")


def _fmt(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if _is_fraction(metric):
        return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _interval(s: Summary | None, metric: str, signed: bool = False) -> str:
    if s is None or math.isnan(s.ci_low):
        return "n/a"
    return f"[{_fmt(s.ci_low, metric, signed)}, {_fmt(s.ci_high, metric, signed)}]"


def markdown(report: Report) -> str:
    m = report.metric
    unit, diff_unit = (" (%)", " (points)") if _is_fraction(m) else ("", "")
    lines = [
        f"| configuration | runs | mean{unit} | std | 95% CI | vs scratch{diff_unit} | 95% CI | p (paired t) | pairs |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for c in report.configurations:
        s = c.summary
        if not c.pretrained:
            comparison = ["baseline", "", "", ""]
        elif c.diff is None:
            comparison = ["no baseline" if c.baseline is None else "no pairs", "", "", ""]
        else:
            p = "n/a" if math.isnan(c.p_value) else f"{c.p_value:.3g}"
            comparison = [_fmt(c.diff.mean, m, True), _interval(c.diff, m, True), p, str(c.diff.n)]
        row = [markdown_text(c.label), str(len(c.runs)), _fmt(s.mean, m), _fmt(s.std, m), _interval(s, m), *comparison]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Metric: `{m}`; 95% confidence intervals of the mean (Student's t); p-values are two-sided,"]
    lines += ["per comparison, not corrected for multiple comparisons."]
    paired = [c for c in report.configurations if c.diffs]
    if paired:
        seeds = sorted({s for c in paired for s in c.seeds})
        lines += ["", f"Paired differences per seed{diff_unit}:", ""]
        lines.append("| configuration | " + " | ".join(f"seed {s}" for s in seeds) + " |")
        lines.append("| --- |" + " ---: |" * len(seeds))
        for c in paired:
            per_seed = dict(zip(c.seeds, c.diffs, strict=True))
            lines.append(
                f"| {markdown_text(c.label)} | " + " | ".join(_fmt(per_seed.get(s), m, True) for s in seeds) + " |"
            )
    return "\n".join([*lines, *notes(report)]) + "\n"


def notes(report: Report) -> list[str]:
    """The markdown lines of the report's warnings and of the results it could not include."""
    lines = []
    if report.warnings:
        lines += ["", "Warnings:", "", *(f"- {markdown_text(w)}" for w in report.warnings)]
    if report.problems:
        lines += [
            "",
            "Not included (missing or corrupt results):",
            "",
            *(f"- {markdown_text(p)}" for p in report.problems),
        ]
    return lines


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def configurations_csv(report: Report) -> str:
    rows = []
    for c in report.configurations:
        s, d = c.summary, c.diff
        rows.append(
            {
                "configuration": c.label,
                "pretrained": c.pretrained,
                "pretext_task": c.runs[0].pretext_task or "",
                "encoder_file": c.runs[0].encoder_file or "",
                "eval": c.runs[0].eval,
                "labels_per_class": "" if c.runs[0].labels_per_class is None else c.runs[0].labels_per_class,
                "metric": report.metric,
                "runs": len(c.runs),
                "seeds": s.n,
                "mean": s.mean,
                "std": s.std,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
                "baseline": c.baseline.label if c.baseline else "",
                "pairs": len(c.seeds),
                "diff_mean": d.mean if d else "",
                "diff_std": d.std if d else "",
                "diff_ci_low": d.ci_low if d else "",
                "diff_ci_high": d.ci_high if d else "",
                "p_value": c.p_value if d else "",
            }
        )
    return _csv(rows)


def runs_csv(report: Report) -> str:
    rows = [
        {"configuration": c.label, "seed": r.seed, report.metric: r.value, "results": str(r.path)}
        for c in report.configurations
        for r in c.runs
    ]
    return _csv(rows)


def plot(report: Report, path: Path) -> None:
    """Left: every seed's value per configuration, a seed's runs joined by a line, with the mean and its
    95% interval. Right: each pretrained configuration's paired differences (a point per seed) with their
    mean and 95% interval, against a line at zero: the analysis the tables give."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 100 if _is_fraction(report.metric) else 1
    unit = " (%)" if scale == 100 else ""
    configs = report.configurations
    paired = [c for c in configs if c.diffs]
    widths = [max(3.5, 1.3 * len(configs))] + ([max(3.5, 1.3 * len(paired))] if paired else [])
    fig, axes = plt.subplots(1, len(widths), figsize=(sum(widths), 4.8), width_ratios=widths, squeeze=False)
    ax = axes[0][0]
    for seed in sorted({s for c in configs for s in c.by_seed}):
        xs = [i for i, c in enumerate(configs) if seed in c.by_seed]
        ax.plot(xs, [configs[i].by_seed[seed] * scale for i in xs], color="grey", alpha=0.35, lw=0.8, marker=".")
    for i, c in enumerate(configs):
        _mean_and_interval(ax, i + 0.12, c.summary, scale, "tab:orange" if c.pretrained else "tab:blue")
    _config_ticks(ax, configs)
    ax.set_ylabel(f"{report.metric}{unit}")
    ax.set_title("each seed's runs joined; mean, 95% CI", fontsize=9)
    if paired:
        ax = axes[0][1]
        for i, c in enumerate(paired):
            jitter = np.linspace(-0.12, 0.12, len(c.diffs)) if len(c.diffs) > 1 else np.zeros(1)
            ax.scatter(i + jitter, np.array(c.diffs) * scale, s=16, alpha=0.6, color="tab:orange")
            _mean_and_interval(ax, i + 0.25, c.diff, scale, "black")
        ax.axhline(0, color="black", lw=0.8)
        _config_ticks(ax, paired)
        ax.set_ylabel(f"difference to its baseline{' (points)' if scale == 100 else ''}")
        ax.set_title("paired differences; mean, 95% CI", fontsize=9)
        ax.set_xlim(-0.6, len(paired) - 0.4)
    names = {dict(r.key).get("data.name") for c in configs for r in c.runs}
    data = _shown(names.pop()) if len(names) == 1 and None not in names else "several data sets"
    fig.suptitle(f"{report.metric} on {printable(data)}", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _mean_and_interval(ax: Any, x: float, s: Summary | None, scale: float, color: str) -> None:
    if s is not None and not math.isnan(s.ci_low):
        err = [[(s.mean - s.ci_low) * scale], [(s.ci_high - s.mean) * scale]]
        ax.errorbar(x, s.mean * scale, yerr=err, fmt="o", color=color, capsize=4)
    elif s is not None:
        ax.plot([x], [s.mean * scale], "o", color=color)


def _config_ticks(ax: Any, configs: Sequence[Configuration]) -> None:
    labels = [printable(c.label).replace("$", r"\$") for c in configs]  # a $ would start matplotlib's mathtext
    ax.set_xticks(range(len(configs)), labels, rotation=20, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def view(report: Report) -> tuple[Callable[[Report], str], Callable[[Report, Path], None]]:
    """The tables and the figure for these runs: the evaluation protocol's where they form one, else these."""
    from finetune import protocol_report  # imported here: it builds on this module

    if protocol_report.is_protocol(report):
        return protocol_report.markdown, protocol_report.plot
    return markdown, plot


def write_report(report: Report, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    tables, figure = view(report)
    written = {
        "markdown": write_text(out_dir / "report.md", tables(report)),
        "csv": write_text(out_dir / "report.csv", configurations_csv(report)),
        "runs": write_text(out_dir / "runs.csv", runs_csv(report)),
        "plot": out_dir / "report.png",
    }
    figure(report, written["plot"])
    return written


def make_report(
    paths: Sequence[str | Path], metric: str = "test_acc", min_seeds: int = 5, ignore: Sequence[str] = ()
) -> Report:
    """Find, read, group and compare the results under ``paths``."""
    files, problems = find_results(paths)
    runs, corrupt, skipped = read_runs(files, metric, ignore)
    report = build_report(runs, metric, min_seeds, [*problems, *corrupt])
    report.skipped = skipped
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.report",
        description="Compare fine-tuning runs over seeds: mean, std, 95% CI, paired differences against scratch "
        "(and, for a sweep over label budgets or evaluation modes, the protocol's tables and curves).",
    )
    parser.add_argument("paths", nargs="+", help="results.json files, run folders or sweep folders")
    parser.add_argument("--out", type=Path, help="folder for report.md/.csv/.png (default: the first folder given)")
    parser.add_argument("--metric", default="test_acc", help="the results.json value to compare (default test_acc)")
    parser.add_argument("--min-seeds", type=int, default=5, help="warn below this many seeds or pairs (default 5)")
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY",
        help="a config key (or prefix) to leave out of what defines a configuration, e.g. trainer.max_epochs",
    )
    args = parser.parse_args(argv)
    try:
        report = make_report(args.paths, args.metric, args.min_seeds, args.ignore)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    first = Path(args.paths[0])
    out = args.out or (first if first.is_dir() else first.parent)
    print(view(report)[0](report), end="")
    written = write_report(report, out)
    if report.skipped:
        print(f"({report.skipped} pretraining result(s) skipped)")
    for problem in report.problems:
        print(f"warning: not included: {printable(problem)}", file=sys.stderr)
    print("report written to " + ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
