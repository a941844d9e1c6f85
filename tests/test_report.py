"""The multi-seed report on fixed inputs: grouping, statistics by hand, bad files, outputs."""

from __future__ import annotations

import copy
import csv
import math

import pytest

from finetune.report.collect import read_runs
from finetune.report.command import main, make_report
from finetune.report.group import Configuration, Report, build_report
from finetune.report.render import markdown
from pretrain.run.files import write_json

MLP = {"arch": "mlp", "input_shape": [1, 8, 8], "options": {"widths": [16]}, "depth": 1}
CONFIG = {
    "seed": 0,
    "resume": None,
    "encoder": "none",
    "reuse_blocks": None,
    "backbone": {"arch": "mlp", "widths": [16]},
    "data": {"name": "digits", "seed": 0, "root": None, "label_budget": 100},
    "optimizer": {"lr": 0.003},
    "schedule": {"unfreeze_epoch": 5, "encoder_lr_factor": 0.1},
    "trainer": {"max_epochs": 20, "enable_progress_bar": True},
}
T975 = {1: 12.706204736174698, 2: 4.302652729911275}  # Student's t, 97.5% quantile, from tables


def results(seed: int, acc: float, encoder: str | None = None, sha: str | None = None, **config) -> dict:
    cfg = copy.deepcopy(CONFIG)
    cfg.update(seed=seed, encoder=encoder or "none")
    cfg["data"]["seed"] = seed
    for key, value in config.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return {
        "kind": "finetune",
        "seed": seed,
        "test_acc": acc,
        "test_loss": 1 - acc,
        "encoder_file": encoder,
        "encoder_sha256": sha,
        "pretext_task": "autoencoder" if sha else None,
        "architecture": MLP,
        "config": cfg,
    }


def write_runs(folder, runs: list[dict]) -> None:
    for i, r in enumerate(runs):
        write_json(folder / str(i) / "results.json", r)


SCRATCH = [0.80, 0.84, 0.85]
PRETRAINED = [0.86, 0.85, 0.90]


def study(tmp_path):
    runs = [results(s, a) for s, a in enumerate(SCRATCH)]
    runs += [results(s, a, encoder=f"/x/{s}/../enc.safetensors", sha="aa") for s, a in enumerate(PRETRAINED)]
    write_runs(tmp_path / "sweep", runs)
    return tmp_path / "sweep"


def by_label(report: Report) -> dict[str, Configuration]:
    return {c.label: c for c in report.configurations}


def test_statistics_equal_hand_computed_values(tmp_path):
    report = make_report([study(tmp_path)])
    configs = by_label(report)
    assert list(configs) == ["scratch", "autoencoder"]
    scratch, pre = configs["scratch"], configs["autoencoder"]

    mean = sum(SCRATCH) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in SCRATCH) / 2)
    half = T975[2] * std / math.sqrt(3)
    s = scratch.summary
    assert (s.n, s.mean, s.std) == (3, pytest.approx(mean), pytest.approx(std))
    assert (s.ci_low, s.ci_high) == (pytest.approx(mean - half), pytest.approx(mean + half))

    diffs = [p - q for p, q in zip(PRETRAINED, SCRATCH, strict=True)]  # 0.06, 0.01, 0.05
    d_mean = sum(diffs) / 3
    d_std = math.sqrt(sum((d - d_mean) ** 2 for d in diffs) / 2)
    assert pre.baseline is scratch and pre.seeds == [0, 1, 2]
    assert pre.diffs == pytest.approx(diffs)
    assert (pre.diff.mean, pre.diff.std) == (pytest.approx(d_mean), pytest.approx(d_std))
    d_half = T975[2] * d_std / math.sqrt(3)
    assert (pre.diff.ci_low, pre.diff.ci_high) == (pytest.approx(d_mean - d_half), pytest.approx(d_mean + d_half))
    # Paired t-test with 2 degrees of freedom: the t CDF is 1/2 + t / (2 sqrt(2 + t^2)).
    t = d_mean / (d_std / math.sqrt(3))
    assert pre.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t))

    table = markdown(report)
    assert f"| scratch | 3 | {100 * mean:.2f} | {100 * std:.2f} | [{100 * (mean - half):.2f}," in table
    assert f"| {100 * d_mean:+.2f} | [{100 * (d_mean - d_half):+.2f}, {100 * (d_mean + d_half):+.2f}] |" in table
    assert "| autoencoder | +6.00 | +1.00 | +5.00 |" in table  # the per-seed differences
    assert "only 3 paired seed(s)" in table  # below the default of 5


def test_one_pair_has_no_interval_and_two_pairs_use_the_t_table(tmp_path):
    runs = [results(0, 0.8), results(1, 0.9), results(0, 0.85, "/e", "aa"), results(1, 0.90, "/e", "aa")]
    report = build_report(read_runs(_files(tmp_path, runs), "test_acc")[0], "test_acc")
    pre = by_label(report)["autoencoder"]
    d_mean, d_std = 0.025, math.sqrt(2 * 0.025**2)  # differences 0.05 and 0.00
    half = T975[1] * d_std / math.sqrt(2)
    assert (pre.diff.ci_low, pre.diff.ci_high) == (pytest.approx(d_mean - half), pytest.approx(d_mean + half))
    t = d_mean / (d_std / math.sqrt(2))
    assert pre.p_value == pytest.approx(1 - 2 * math.atan(t) / math.pi)  # 1 degree of freedom: Cauchy
    single = build_report(read_runs(_files(tmp_path / "b", runs[:1]), "test_acc")[0], "test_acc")
    s = single.configurations[0].summary
    assert s.n == 1 and math.isnan(s.std) and math.isnan(s.ci_low)
    assert "| scratch | 1 | 80.00 | n/a | n/a |" in markdown(single)
    assert any("only 1 seed(s)" in w for w in single.warnings)


def _files(folder, runs):
    write_runs(folder, runs)
    return sorted(folder.rglob("results.json"))


def test_what_makes_a_configuration(tmp_path):
    runs = [
        results(0, 0.8),
        results(1, 0.8, **{"trainer.enable_progress_bar": False, "data.root": "/elsewhere"}),  # run-specific
        results(2, 0.8, **{"schedule.unfreeze_epoch": 9}),  # scratch runs have no schedule
        results(0, 0.9, "/a/enc.safetensors", "aa"),
        results(1, 0.9, "/moved/enc.safetensors", "aa"),  # the same encoder, moved
        results(0, 0.9, "/a/enc.safetensors", "bb"),  # overwritten by another encoder
        results(0, 0.9, "/a/enc.safetensors", "aa", **{"schedule.unfreeze_epoch": 2}),
        results(0, 0.7, **{"optimizer.lr": 0.01}),
    ]
    report = build_report(read_runs(_files(tmp_path, runs), "test_acc")[0], "test_acc")
    sizes = {c.label: len(c.runs) for c in report.configurations}
    assert sizes == {
        "scratch, optimizer.lr=0.003": 3,
        "scratch, optimizer.lr=0.01": 1,
        "autoencoder (aa), optimizer.lr=0.003, schedule.unfreeze_epoch=5": 2,
        "autoencoder (bb), optimizer.lr=0.003, schedule.unfreeze_epoch=5": 1,
        "autoencoder (aa), optimizer.lr=0.003, schedule.unfreeze_epoch=2": 1,
    }
    for c in report.configurations:
        if c.pretrained:
            assert c.baseline.label == "scratch, optimizer.lr=0.003"
    # --ignore pools a key the user does not want to split on
    pooled_runs = read_runs(sorted(tmp_path.rglob("results.json")), "test_acc", ["optimizer"])[0]
    pooled = build_report(pooled_runs, "test_acc")
    assert {c.label: len(c.runs) for c in pooled.configurations if not c.pretrained} == {"scratch": 4}


def test_no_matching_baseline_says_what_differs(tmp_path):
    runs = [results(0, 0.8, **{"trainer.max_epochs": 30}), results(0, 0.9, "/a/enc.safetensors", "aa")]
    report = build_report(read_runs(_files(tmp_path, runs), "test_acc")[0], "test_acc")
    pre = by_label(report)["autoencoder, trainer.max_epochs=20"]
    assert pre.baseline is None and pre.diff is None
    [warning] = [w for w in report.warnings if "no from-scratch baseline" in w]
    assert "trainer.max_epochs: 20 here, 30 there" in warning


def test_missing_and_corrupt_results_are_named_and_the_others_reported(tmp_path):
    sweep = study(tmp_path)
    (sweep / "1" / "results.json").write_text('{"kind": "finetune", "seed": 1, "test_')  # cut short
    write_json(sweep / "2" / "results.json", results(2, float("nan")))
    (sweep / "9" / ".hydra").mkdir(parents=True)  # a run folder whose run died before writing results
    (sweep / "9" / ".hydra" / "config.yaml").write_text("seed: 9\n")
    (sweep / "9" / "finetune.log").write_text("Traceback ...\n")
    write_json(sweep / "7" / "results.json", {"kind": "pretrain", "seed": 0, "metrics": {}})

    report = make_report([sweep, tmp_path / "nowhere"])
    assert {c.label: len(c.runs) for c in report.configurations} == {"scratch": 1, "autoencoder": 3}
    problems = "\n".join(report.problems)
    assert f"{sweep / '1' / 'results.json'}: corrupt" in problems
    assert f"{sweep / '2' / 'results.json'}: corrupt" in problems
    assert f"{sweep / '9' / 'results.json'}: missing" in problems and str(sweep / "9" / "finetune.log") in problems
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in problems
    assert report.skipped == 1 and len(report.problems) == 4
    assert str(sweep / "9" / "results.json") in markdown(report)


def test_command_writes_markdown_csv_and_plot(tmp_path, capsys):
    sweep = study(tmp_path)
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    assert (out / "report.md").read_text() in printed
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["configuration"] for r in rows] == ["scratch", "autoencoder"]
    assert float(rows[1]["diff_mean"]) == pytest.approx(sum(PRETRAINED) / 3 - sum(SCRATCH) / 3)
    per_run = list(csv.DictReader((out / "runs.csv").open()))
    assert len(per_run) == 6 and {r["seed"] for r in per_run} == {"0", "1", "2"}
    assert not list(out.glob(".*.tmp"))  # written atomically

    assert main([str(tmp_path / "empty")]) == 2  # bad input, as everywhere
    assert "no fine-tuning results" in capsys.readouterr().err


def test_duplicate_seeds_count_once(tmp_path):
    runs = [results(0, 0.8), results(0, 0.9), results(1, 0.7)]
    report = build_report(read_runs(_files(tmp_path, runs), "test_acc")[0], "test_acc")
    c = report.configurations[0]
    assert c.by_seed == {0: pytest.approx(0.85), 1: 0.7} and c.summary.n == 2
    assert any("seed 0 was run 2 times" in w for w in report.warnings)


def test_an_unknown_metric_is_one_error_that_lists_the_metrics(tmp_path, capsys):
    sweep = study(tmp_path)
    assert main([str(sweep), "--metric", "f1"]) == 2
    captured = capsys.readouterr()
    assert (
        captured.err == "error: unknown metric 'f1': the results have test_acc, test_loss; choose one with --metric\n"
    )
    assert captured.out == "" and not list(sweep.glob("report.*"))
    # A metric that some results have: the others are left out, each named.
    write_json(sweep / "0" / "results.json", {**results(0, 0.8), "f1": 0.7})
    write_json(sweep / "1" / "results.json", {**results(1, 0.8), "f1": 0.75})
    report = make_report([sweep], "f1")
    assert [len(c.runs) for c in report.configurations] == [2]
    assert f"{sweep / '2' / 'results.json'}: no f1 in it" in report.problems and len(report.problems) == 4


def test_strings_from_results_cannot_break_the_report_or_the_terminal(tmp_path, capsys):
    runs = [results(s, a) for s, a in enumerate(SCRATCH)]
    runs += [results(s, a, "/e", "aa") for s, a in enumerate(PRETRAINED)]
    for r in runs[3:]:
        r["pretext_task"] = "evil | cell\n# Injected\x1b[2J $x^$"
    write_runs(tmp_path / "sweep", runs)
    (tmp_path / "sweep" / "9\x1b[31m\n# Folder").mkdir()  # a folder name is read from a file system
    (tmp_path / "sweep" / "9\x1b[31m\n# Folder" / "results.json").write_text("{")
    assert main([str(tmp_path / "sweep")]) == 0
    captured = capsys.readouterr()
    md = (tmp_path / "sweep" / "report.md").read_text()
    for text in (md, captured.out, captured.err):
        assert "\x1b" not in text and "\n# Injected" not in text and "\n# Folder" not in text
    table = md.split("\n\n")[0].splitlines()
    assert table[3].startswith("| evil \\| cell\\\\n# Injected\\\\x1b[2J $x^$ | 3 | 87.00 |")
    assert all(row.count(" | ") == 8 for row in table)  # nine cells in every row
    assert "sweep/9\\x1b[31m\\n# Folder/results.json: corrupt" in captured.err
    assert (tmp_path / "sweep" / "report.png").stat().st_size > 0  # the $ did not start a math formula
