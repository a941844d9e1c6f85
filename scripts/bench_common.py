"""What the benchmark scripts share: figures and their table, repeats, the commands run in-process,
the plain PyTorch loop the pipeline is compared with, and resident-memory readings."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Figure:
    """One line of the table: a measured value against its baseline, each the median of its repeats.

    ``target`` is ``(what, op, value)``: ``what`` is ``ratio`` or ``measured``, ``op`` is ``>=`` or ``<=``.
    """

    section: str
    name: str
    unit: str
    measured: list[float]
    baseline: list[float] | None = None
    baseline_name: str = ""
    target: tuple[str, str, float] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def m(self) -> float:
        return statistics.median(self.measured)

    @property
    def b(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def ratio(self) -> float | None:
        return self.m / self.b if self.b else None

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        what, op, value = self.target
        x = self.ratio if what == "ratio" else self.m
        if x is None:
            return None
        return x >= value if op == ">=" else x <= value


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "img/s":
        return f"{value:,.0f} img/s"
    if unit == "s":
        return f"{value:.3g} s" if value < 10 else f"{value:,.1f} s"
    if unit == "ms":
        return f"{value:.3g} ms"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:.3g} {unit}".strip()


def target_text(target: tuple[str, str, float] | None, unit: str) -> str:
    if target is None:
        return ""
    what, op, value = target
    op = {">=": "≥", "<=": "≤"}[op]
    return f"ratio {op} {value:g}" if what == "ratio" else f"{op} {fmt(value, unit)}"


def table(figures: Sequence[Figure]) -> str:
    """The figures as a Markdown table: measured / baseline, ratio, target and whether it is met."""
    lines = [
        "| # | figure | measured | baseline | ratio | target | met |",
        "| --- | --- | ---: | --- | ---: | --- | --- |",
    ]
    for f in figures:
        baseline = f"{fmt(f.b, f.unit)} ({f.baseline_name})" if f.b is not None else f.baseline_name
        ratio = f"{f.ratio:.3g}" if f.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        name = f"{f.name} ({f.note})" if f.note else f.name
        lines.append(
            f"| {f.section} | {name} | {fmt(f.m, f.unit)} | {baseline} | {ratio} | {target_text(f.target, f.unit)} | "
            f"{met} |"
        )
    return "\n".join(lines)


def save(figures: Sequence[Figure], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps([asdict(f) for f in figures], indent=1) + "\n")


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    import tempfile

    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        yield Path(args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="pretext-bench-") as d:
            yield Path(d)


def data_root() -> str:
    root = os.environ.get("PRETEXT_DATA")
    if not root or not (Path(root) / "FashionMNIST" / "raw").is_dir():
        sys.exit("the benchmark needs Fashion-MNIST: set PRETEXT_DATA to a folder holding FashionMNIST/raw")
    return root


# --- commands run in this process ------------------------------------------------------------


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send stdout and stderr (progress bars included) to /dev/null, as a terminal would take them,
    and keep Lightning's notes (its log handlers hold the real stderr) to warnings."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with (
            open(os.devnull, "w") as null,
            contextlib.redirect_stdout(null),
            contextlib.redirect_stderr(null),
        ):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def hydra_command(main: Callable[[], None], argv: Sequence[str]) -> float:
    """Run ``python -m pretrain|finetune ARGV`` in this process (its ``@hydra.main`` function); wall seconds."""
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level, saved_argv = root.handlers[:], root.level, sys.argv
    sys.argv = ["bench", *argv]
    GlobalHydra.instance().clear()
    start = time.perf_counter()
    try:
        with quiet():
            main()
    except SystemExit as exit:
        if exit.code:
            raise RuntimeError(f"{' '.join(argv)} exited with status {exit.code}") from None
    finally:
        elapsed = time.perf_counter() - start
        GlobalHydra.instance().clear()
        sys.argv = saved_argv
        root.handlers[:], root.level = handlers, level
    return elapsed


class EpochTimer(L.Callback):
    """Records the wall time of every training epoch, from one epoch's start to the next one's (so
    each includes the epoch-end work), the last one to the end of training."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = clock(pl_module.device)
        if self.starts:
            self.seconds.append(now - self.starts[-1])
        self.starts.append(now)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(clock(pl_module.device) - self.starts[-1])


def clock(device: Any) -> float:
    """``time.perf_counter()`` once the device has finished its queued work."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def steady_rate(epoch_seconds: Sequence[float], images: int) -> float:
    """Images per second in the steady state: an epoch's images over ``steady_seconds``."""
    return images / steady_seconds(epoch_seconds)


def steady_seconds(epoch_seconds: Sequence[float]) -> float:
    """Seconds an epoch after the first (warm-up) one: their mean, not their median, so that work
    done every N steps (logs, checkpoints) counts at its true frequency even where epochs are
    shorter than N steps. A slow spell of a shared machine is left to the median over repeats."""
    return statistics.fmean(epoch_seconds[1:])


# --- the plain PyTorch loop --------------------------------------------------------------------


def plain_fit(
    loss_fn: Callable[[Any, Any], Any],
    optimizer: Any,
    images: Any,
    labels: Any,
    batch_size: int,
    epochs: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    device: str = "cpu",
    backward: Callable[[Any], None] | None = None,
) -> list[float]:
    """Train by hand: per epoch a random permutation, per batch an index into the uint8 images,
    a copy to ``device``, normalization, loss, backward (``loss.backward()`` unless ``backward``
    is given), step; on a GPU under bf16 autocast, as ``trainer=gpu`` runs. Nothing else.
    Returns each epoch's wall seconds."""
    import torch

    from pretrain.data.module import normalize
    from pretrain.run.trainer import skip_gpu_probe_without_gpus

    skip_gpu_probe_without_gpus()  # undo what importing Lightning did to this process, as the pipeline does
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device != "cpu")
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    seconds = []
    for _ in range(epochs):
        start = clock(device)
        order = torch.randperm(n, generator=generator)
        for first in range(0, n, batch_size):
            index = order[first : first + batch_size]
            if len(index) == 1:
                break  # as the pipeline: a batch of one breaks batch norm
            x = normalize(images[index].to(device, non_blocking=True), mean, std)  # as the pipeline does
            with autocast:
                loss = loss_fn(x, labels[index].to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            if backward is None:
                loss.backward()
            else:
                backward(loss)
            optimizer.step()
        seconds.append(clock(device) - start)
    return seconds


# --- memory ------------------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident memory of this process now, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def high_water_mb(pid: int) -> float:
    """The peak resident memory so far of process ``pid`` (its VmHWM), MB; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), 0.0)
    except OSError:
        return 0.0


def run_child(argv: Sequence[str], env: dict[str, str] | None = None) -> dict:
    """Run a command to its end; its wall seconds and its peak resident memory (MB).

    The peak is the child's own high-water mark, read every 10 ms while it runs. Not the
    ``ru_maxrss`` that ``wait4`` reports: Linux carries a parent's high-water mark over fork and
    exec, so every child of this process (torch and Lightning imported, data sets loaded by
    earlier sections) would report at least this process's own peak."""
    import subprocess
    import tempfile
    import threading

    peak = [0.0]
    done = threading.Event()

    def watch(pid: int) -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], high_water_mb(pid))

    with open(os.devnull, "w") as null, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(list(argv), stdout=null, stderr=stderr, env=env)
        watcher = threading.Thread(target=watch, args=(child.pid,), daemon=True)
        watcher.start()
        child.wait()
        wall = time.perf_counter() - start
        done.set()
        watcher.join()
        if child.returncode != 0:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(map(str, argv))} exited with status {child.returncode}:\n{tail}")
    return {"wall": wall, "peak_rss_mb": peak[0]}


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child command: this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env
