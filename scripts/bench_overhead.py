"""Section 2, training overhead: steady-state training images/s of the pipeline as a user runs it,
against a plain PyTorch loop that trains the same model on the same tensors, in the same process.

The pipeline is ``python -m pretrain`` / ``python -m finetune`` called in this process (its Hydra main,
with Lightning, TensorBoard and CSV logging, the progress bar, checkpoints, the NaN guard and the
gradient-norm monitor all on, as configured by default). Its steady-state rate is images over the
mean epoch time after the first epoch (``bench_common.steady_rate``). The plain loop
(``bench_common.plain_fit``) and a bare Lightning Trainer (no loggers, callbacks or progress bar: what
Lightning itself costs) are timed the same way, interleaved with the pipeline's runs.

For fine-tuning, a fourth: the same steps in a loop on Lightning Fabric (``plain_epochs``), what
fine-tuning would cost in our own loop instead of the Trainer (the choice the CPU target leaves open).

Validation is off in all of them (``data.val_size=0``): the figure is the training rate; the plain loop
would otherwise need the same validation work. Fine-tuning is the study's from-scratch run
(``experiment=fashion_transfer encoder=none``: 200 images, batch 32, 7 steps an epoch). With ``--gpu``:
``trainer=gpu`` (bf16-mixed, channels-last), the ResNet-18 backbone, batch 512, and all 12,000 sandal and shirt
training images for fine-tuning.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L

from scripts.bench_common import REPO, EpochTimer, Figure, hydra_command, plain_fit, quiet, steady_rate

KINDS = ("supervised", "autoencoder", "masked", "finetune")
GPU_KINDS = ("supervised", "finetune")
GPU = ["trainer=gpu", "backbone=resnet18", "data.batch_size=512"]


def overrides(kind: str, batch_size: int | None = None, budget: int | None = None, gpu: bool = False) -> list[str]:
    """The command-line overrides of a run of ``kind`` (without epochs and run folder)."""
    if kind == "finetune":
        # one pass over the images an epoch, as the plain loop makes (the recipe passes over 200 images 1.6 times)
        argv = ["experiment=fashion_transfer", "encoder=none", "seed=0", "data.min_batches_per_epoch=null"]
    else:
        argv = ["data=fashion_mnist", f"task={kind}", "data.val_size=0"]
        if kind == "masked":
            argv.append("backbone=vit")  # the encoder family masked prediction is designed for
    if gpu:
        argv += [*GPU, *(["data.label_budget=null"] if kind == "finetune" else [])]
    if batch_size is not None:
        argv.append(f"data.batch_size={batch_size}")
    if budget is not None:
        argv.append(f"data.label_budget={budget}")
    return argv


def compose(kind: str, argv: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="finetune" if kind == "finetune" else "pretrain", overrides=argv)


def build(kind: str, argv: list[str]) -> dict[str, Any]:
    """The model, optimizer, loss and training tensors that the pipeline's run builds from ``argv``,
    the model on the device the run's trainer uses."""
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    from finetune.classifier import Classifier
    from pretrain.assemble import assemble
    from pretrain.tasks.autoencoder import reconstruction_loss

    cfg = compose(kind, argv)
    L.seed_everything(cfg.seed, verbose=False)
    if kind == "finetune":  # the command's classifier from scratch, without its schedule: the plain loop has none
        data, model = assemble(
            cfg, lambda encoder, info: Classifier(encoder, instantiate(cfg.optimizer), info, dropout=cfg.head.dropout)
        )
    else:
        data, model = assemble(cfg)
    if kind in ("supervised", "finetune"):

        def loss(x, y):
            return F.cross_entropy(model(x), y)
    elif kind == "autoencoder":

        def loss(x, y):
            return reconstruction_loss(model(x), x, model.loss, model.data_info)
    elif kind == "masked":

        def loss(x, y):
            return model.task_loss(x)
    else:
        raise ValueError(f"no plain loop for {kind}")
    device = "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu"
    if cfg.trainer.channels_last:  # as pretrain.run.callbacks.ChannelsLast does in the pipeline's run
        model.to(memory_format=torch.channels_last)
    model.to(device).train()
    return {
        "model": model,
        "loss": loss,
        "images": data.train_set.images,
        "labels": data.train_set.labels,
        "batch_size": data.batch_size,
        "mean": data.info.mean,
        "std": data.info.std,
        "seed": cfg.seed,
        "device": device,
        "precision": "bf16-mixed" if device == "cuda" else "32-true",
    }


@contextlib.contextmanager
def with_callback(kind: str, callback: L.Callback) -> Iterator[None]:
    """Runs of ``kind`` get ``callback`` beside their own (the entry point's ``build_trainer``, patched)."""
    import finetune.__main__ as finetune_main
    import pretrain.__main__ as pretrain_main

    module = finetune_main if kind == "finetune" else pretrain_main
    build_trainer = module.build_trainer
    module.build_trainer = lambda cfg, d, cb=(), faults=None: build_trainer(cfg, d, [*cb, callback], faults=faults)
    try:
        yield
    finally:
        module.build_trainer = build_trainer


def pipeline_epochs(kind: str, argv: list[str], epochs: int, run_dir: Path) -> list[float]:
    """Each epoch's wall seconds in ``python -m pretrain|finetune ARGV`` run in this process."""
    import finetune.__main__ as finetune_main
    import pretrain.__main__ as pretrain_main

    main = finetune_main.main if kind == "finetune" else pretrain_main.main
    timer = EpochTimer()
    with with_callback(kind, timer):
        hydra_command(main, [*argv, f"trainer.max_epochs={epochs}", f"hydra.run.dir={run_dir}"])
    return timer.seconds


def plain_epochs(kind: str, argv: list[str], epochs: int, fabric: bool = False) -> list[float]:
    """The plain loop (``plain_fit``) on the run's model. With ``fabric``, its model and optimizer set up
    by Lightning Fabric and the backward pass through it: what Lightning costs without the Trainer's
    loop, hooks and logging."""
    b = build(kind, argv)
    loss, optimizer, backward = b["loss"], b["model"].configure_optimizers(), None
    if fabric:
        accelerator = "gpu" if b["device"] == "cuda" else "cpu"
        with quiet():
            runner = L.Fabric(accelerator=accelerator, devices=1, precision=b["precision"])
        _, optimizer = runner.setup(b["model"], optimizer)
        backward = runner.backward

        def loss(x, y):  # b["loss"] calls the model, not Fabric's wrapper: the autocast that wrapper adds, here
            with runner.autocast():
                return b["loss"](x, y)

    return plain_fit(
        loss,
        optimizer,
        b["images"],
        b["labels"],
        b["batch_size"],
        epochs,
        b["mean"],
        b["std"],
        b["seed"],
        b["device"],
        backward=backward,
    )


def bare_lightning_epochs(kind: str, argv: list[str], epochs: int) -> list[float]:
    """The same model and loss under a Trainer with nothing added: no loggers, callbacks, progress bar,
    checkpoints or model summary; deterministic on CPU, as the pipeline's trainer."""
    from pretrain.data.batching import EpochPermutation, TensorBatches
    from pretrain.data.module import normalize

    b = build(kind, argv)

    class Bare(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.task = b["model"]

        def training_step(self, batch, batch_idx):
            images, labels = batch
            return b["loss"](normalize(images, b["mean"], b["std"]), labels)

        def configure_optimizers(self):
            return self.task.configure_optimizers()

    order = EpochPermutation(len(b["labels"]), True, b["seed"])
    loader = TensorBatches(b["images"], b["labels"], b["batch_size"], order)
    timer = EpochTimer()
    with quiet():  # Lightning prints what it found at construction
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="gpu" if b["device"] == "cuda" else "cpu",
            devices=1,
            precision=b["precision"],
            deterministic=b["device"] == "cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
    with quiet():
        trainer.fit(Bare(), loader)
    return timer.seconds


def checkpoint_write_ms(kind: str, argv: list[str], run_dir: Path, writes: int = 5) -> float:
    """Milliseconds that training waits for one checkpoint written the way ``last.ckpt`` is (Lightning's
    checkpoint of the whole training state: copied, then written atomically and synced to disk in a
    background thread), measured at the end of a 1-epoch run."""
    times: list[float] = []

    class Probe(L.Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            for i in range(writes):
                start = time.perf_counter()
                trainer.save_checkpoint(run_dir / f"probe{i}.ckpt")
                times.append(time.perf_counter() - start)

    with with_callback(kind, Probe()):
        pipeline_epochs(kind, argv, 1, run_dir)
    return 1000 * statistics.median(times)


def measure(
    kind: str, argv: list[str], epochs: int, repeats: int, root: Path, log: Callable[[str], None]
) -> dict[str, list[float]]:
    """Steady-state images/s of the pipeline, the plain loop and bare Lightning (and for fine-tuning the
    Fabric loop), per repeat, interleaved so that a slow spell of a shared machine hits them alike."""
    images = len(build(kind, argv)["labels"])
    rates: dict[str, list[float]] = {"pipeline": [], "plain": [], "bare": []}
    if kind == "finetune":
        rates["fabric"] = []
    for r in range(repeats):
        rates["pipeline"].append(steady_rate(pipeline_epochs(kind, argv, epochs, root / f"{kind}-{r}"), images))
        rates["plain"].append(steady_rate(plain_epochs(kind, argv, epochs), images))
        rates["bare"].append(steady_rate(bare_lightning_epochs(kind, argv, epochs), images))
        if "fabric" in rates:
            rates["fabric"].append(steady_rate(plain_epochs(kind, argv, epochs, fabric=True), images))
        log(f"  {kind} repeat {r}: " + ", ".join(f"{k} {v[-1]:,.0f} img/s" for k, v in rates.items()))
    return rates


def figures(args: argparse.Namespace, root: Path) -> list[Figure]:
    kinds = GPU_KINDS if args.gpu else KINDS
    result = []
    for kind in kinds:
        budget = None
        if args.tiny:
            budget = 64 if kind == "finetune" else 1024
        elif kind == "masked" and not args.gpu:
            budget = 6000  # a ViT on CPU: a tenth of the images keeps this section in minutes
        argv = overrides(kind, budget=budget, gpu=args.gpu)
        if args.tiny:
            epochs = 3
        elif kind == "finetune":
            epochs = 10 if args.gpu else 40  # 24 and 7 steps an epoch: many epochs, several log steps
        else:
            epochs = 4
        rates = measure(kind, argv, epochs, args.repeats, root, args.log)
        size = compose(kind, argv).data
        note = f"batch {size.batch_size}, {len(build(kind, argv)['labels']):,} images"
        if args.gpu:
            note += ", GPU bf16-mixed, resnet18"
        name = "fine-tuning" if kind == "finetune" else f"{kind} pretraining"
        result.append(
            Figure(
                "2",
                f"training, {name}",
                "img/s",
                rates["pipeline"],
                rates["plain"],
                "plain loop",
                ("ratio", ">=", 0.95),
                note,
            )
        )
        result.append(
            Figure(
                "2",
                f"bare Lightning, {name} (reference: Lightning alone)",
                "img/s",
                rates["bare"],
                rates["plain"],
                "plain loop",
            )
        )
        if "fabric" in rates:
            result.append(
                Figure(
                    "2",
                    f"Lightning Fabric loop, {name} (reference: our own loop instead of the Trainer)",
                    "img/s",
                    rates["fabric"],
                    rates["plain"],
                    "plain loop",
                )
            )
        if kind in ("supervised", "finetune") and not args.gpu:
            write = [checkpoint_write_ms(kind, argv, root / f"ckpt-{kind}-{r}") for r in range(args.repeats)]
            every = compose(kind, argv).faults.checkpoint_every_n_steps
            steps = [every * 1000 * size.batch_size / rate for rate in rates["plain"]]
            result.append(
                Figure(
                    "2",
                    f"checkpoint, training's wait per write, {name} (ratio: its cost at one per {every:,} steps)",
                    "ms",
                    write,
                    steps,
                    f"{every:,} plain steps",
                )
            )
    return result
