"""The evaluation protocol's view of a report: accuracy against labeled images per class.

``python -m finetune.report`` lays runs out this way when they span several label budgets or
evaluation modes (``eval``), as ``experiment=protocol`` makes them. The configurations are those
of ``finetune.report.group``, compared as there: each encoder with ``encoder=none`` of the same
architecture, evaluation mode, labels and other settings, seed by seed. Here they become lines: one
per evaluation mode and encoder (and any other setting that varies), over the labels per class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.report.collect import matches_any
from finetune.report.group import Configuration, Report, name_configurations
from finetune.report.render import format_interval, format_value, is_fraction, notes
from finetune.report.stats import Summary
from pretrain.run.files import atomic_write
from pretrain.run.text import markdown_text, printable

MODES = ("knn", "probe", "finetune")
"""The panels' order: from no training to training everything."""

TITLES = {
    "knn": "k-NN on frozen features",
    "probe": "linear probe on frozen features",
    "finetune": "fine-tuned",
}

ALONG = ("eval", "data.label_budget", "data.labels_per_class")
"""Config keys (and prefixes) that place a configuration on its line, not tell lines apart."""


@dataclass
class Line:
    mode: str  # the evaluation mode: one panel each
    key: tuple[tuple[str, str], ...]  # the configuration key less ALONG: the same in every panel
    points: dict[float, Configuration] = field(default_factory=dict)  # labels per class -> its configuration
    label: str = ""

    @property
    def pretrained(self) -> bool:
        return next(iter(self.points.values())).pretrained


def is_protocol(report: Report) -> bool:
    """Whether the runs are a protocol sweep: every one records its labels per class, and there are
    several of those, or several evaluation modes."""
    runs = [r for c in report.configurations for r in c.runs]
    if any(r.labels_per_class is None for r in runs):
        return False
    return len({r.labels_per_class for r in runs}) > 1 or len({r.eval for r in runs}) > 1


def _mode_order(mode: str) -> tuple[int, str]:
    return (MODES.index(mode), "") if mode in MODES else (len(MODES), mode)


def lines(report: Report) -> tuple[list[Line], list[str]]:
    """The report's configurations as lines, by mode, each mode's baseline first; and a warning for
    each configuration left out because it lands on a point its line already has."""
    by_key: dict[tuple, Line] = {}
    left_out = []
    for c in report.configurations:
        run = c.runs[0]
        key = tuple((k, v) for k, v in c.key if not matches_any(k, ALONG))
        line = by_key.setdefault((run.eval, key), Line(run.eval, key))
        if run.labels_per_class in line.points:
            other = line.points[run.labels_per_class]
            left_out.append(
                f"{c.label}: the same line and labels per class as {other.label} (label_budget and labels_per_class "
                "both used?); left out of the protocol tables and figure"
            )
            continue
        line.points[run.labels_per_class] = c
    found = sorted(by_key.values(), key=lambda line: _mode_order(line.mode))
    for mode in dict.fromkeys(line.mode for line in found):
        mine = [line for line in found if line.mode == mode]
        stand_ins = [Configuration(line.key, [r for c in line.points.values() for r in c.runs]) for line in mine]
        name_configurations(stand_ins)  # the report's names, among the lines of one panel
        for line, named in zip(mine, stand_ins, strict=True):
            line.label = named.label
    return sorted(found, key=lambda line: (_mode_order(line.mode), line.pretrained, line.label)), left_out


def _budget(labels_per_class: float) -> str:
    return f"{labels_per_class:g}"


def _cell(s: Summary | None, metric: str, signed: bool = False) -> str:
    if s is None:
        return ""
    interval = format_interval(s, metric, signed)
    return f"{format_value(s.mean, metric, signed)} {interval if interval != 'n/a' else f'(n={s.n})'}"


def markdown(report: Report) -> str:
    """Two tables over the labels per class: each line's mean and 95% interval, and each encoder's
    paired difference to encoder=none with its 95% interval."""
    m = report.metric
    found, left_out = lines(report)
    budgets = sorted({b for line in found for b in line.points})
    unit, diff_unit = (" (%)", " (points)") if is_fraction(m) else ("", "")
    head = " | ".join(_budget(b) for b in budgets)
    rule = "| --- | --- |" + " ---: |" * len(budgets)
    out = [
        f"`{m}`{unit} against labeled images per class: mean [95% CI] over seeds",
        "",
        f"| eval | encoder | {head} |",
        rule,
    ]
    for line in found:
        cells = [_cell(c.summary, m) if (c := line.points.get(b)) else "" for b in budgets]
        out.append(f"| {markdown_text(line.mode)} | {markdown_text(line.label)} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"Paired differences{diff_unit}, encoder minus encoder=none of the same architecture, evaluation mode,",
        "labels and seed: mean [95% CI]",
        "",
        f"| eval | encoder | {head} |",
        rule,
    ]
    for line in (line for line in found if line.pretrained):
        cells = []
        for b in budgets:
            c = line.points.get(b)
            if c is None:
                cells.append("")
            elif c.diff is None:
                cells.append("no baseline" if c.baseline is None else "no pairs")
            else:
                cells.append(_cell(c.diff, m, signed=True) + f" ({c.diff.n} pairs)")
        out.append(f"| {markdown_text(line.mode)} | {markdown_text(line.label)} | " + " | ".join(cells) + " |")
    out += [
        "",
        "encoder=none is the same architecture with random weights: trained from scratch under eval=finetune",
        "(scratch), left as they are under probe and knn (random weights). 95% intervals of the mean (Student's t);",
        "each comparison's paired t-test p-value is in report.csv (not corrected for multiple comparisons).",
    ]
    report = dataclasses.replace(report, warnings=[*report.warnings, *left_out])
    return "\n".join([*out, *notes(report)]) + "\n"


def plot(report: Report, path: Path) -> None:
    """One panel per evaluation mode: the metric against labels per class (log scale), one line per
    encoder with its 95% interval as a band; an encoder has the same colour in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 100 if is_fraction(report.metric) else 1
    found = lines(report)[0]
    modes = list(dict.fromkeys(line.mode for line in found))
    keys = list(dict.fromkeys(line.key for line in sorted(found, key=lambda line: (line.pretrained, line.label))))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(modes), figsize=(4.5 * len(modes), 4.2), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        budgets = set()
        for line in (line for line in found if line.mode == mode):
            xs = sorted(line.points)
            budgets.update(xs)
            summaries = [line.points[x].summary for x in xs]
            mean, low, high = (scale * np.array([(s.mean, s.ci_low, s.ci_high) for s in summaries])).T
            colour = colours(keys.index(line.key) % colours.N)
            label = printable(line.label).replace("$", r"\$")  # a $ would start matplotlib's mathtext
            ax.plot(xs, mean, marker="o", color=colour, label=label)
            ax.fill_between(xs, low, high, color=colour, alpha=0.2, linewidth=0)  # no band where one seed: nan
        ax.set_xscale("log")
        ax.set_xticks(sorted(budgets), [_budget(b) for b in sorted(budgets)])
        ax.minorticks_off()
        ax.set_title(f"eval={printable(mode)}" + (f": {TITLES[mode]}" if mode in TITLES else ""), fontsize=9)
        ax.set_xlabel("labeled images per class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"{report.metric}{' (%)' if scale == 100 else ''}")
    fig.suptitle("mean over seeds; band: 95% CI of the mean", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
