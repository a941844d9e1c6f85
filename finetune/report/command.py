"""``python -m finetune.report PATH...``: find, read, group and compare, then write the report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from finetune.report import protocol
from finetune.report.collect import ReportError, find_results, read_runs
from finetune.report.group import Report, build_report
from finetune.report.render import configurations_csv, markdown, plot, runs_csv
from pretrain.run.files import write_text
from pretrain.run.text import printable


def view(report: Report) -> tuple[Callable[[Report], str], Callable[[Report, Path], None]]:
    """The tables and the figure for these runs: the evaluation protocol's where they form one, else these."""
    if protocol.is_protocol(report):
        return protocol.markdown, protocol.plot
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
