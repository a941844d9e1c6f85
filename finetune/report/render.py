"""A report written out: the markdown tables, the CSV files and the figure."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finetune.report.group import Configuration, Report, shortened
from finetune.report.stats import Summary
from pretrain.run.files import atomic_write
from pretrain.run.text import markdown_text, printable


def is_fraction(metric: str) -> bool:
    return metric.endswith("acc")


def format_value(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if is_fraction(metric):
        return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def format_interval(s: Summary | None, metric: str, signed: bool = False) -> str:
    if s is None or math.isnan(s.ci_low):
        return "n/a"
    return f"[{format_value(s.ci_low, metric, signed)}, {format_value(s.ci_high, metric, signed)}]"


def markdown(report: Report) -> str:
    m = report.metric
    unit, diff_unit = (" (%)", " (points)") if is_fraction(m) else ("", "")
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
            comparison = [format_value(c.diff.mean, m, True), format_interval(c.diff, m, True), p, str(c.diff.n)]
        row = [
            markdown_text(c.label),
            str(len(c.runs)),
            format_value(s.mean, m),
            format_value(s.std, m),
            format_interval(s, m),
            *comparison,
        ]
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
                f"| {markdown_text(c.label)} | "
                + " | ".join(format_value(per_seed.get(s), m, True) for s in seeds)
                + " |"
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

    scale = 100 if is_fraction(report.metric) else 1
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
    data = shortened(names.pop()) if len(names) == 1 and None not in names else "several data sets"
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
