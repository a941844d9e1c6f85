"""How good an encoder's features are while it pretrains: k-NN accuracy (and a linear probe) on validation images.

The measure solo-learn and lightly report for every self-supervised method: each validation
image takes the class of its ``k`` most cosine-similar training images, their votes weighted
by ``exp(similarity / temperature)`` (Wu et al. 2018, k=20, T=0.07). The training labels are
read here only, for evaluation: no pretext loss ever sees them.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from pretrain.encoders import readout

SIMILARITIES_PER_CHUNK = 2**24
"""Entries of the (validation x bank) similarity matrix held at once: 64 MB of float32."""


def knn_predict(
    features: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 20, temperature: float = 0.07
) -> Tensor:
    """The class each row of ``features`` gets from its ``k`` nearest rows of ``bank`` by cosine similarity,
    each neighbour voting for its label with weight ``exp(similarity / temperature)``.

    Both are L2-normalized ``(N, D)`` and ``(M, D)`` features; ``bank_labels`` ``(M,)`` class indices.
    The similarities are computed a chunk of rows at a time, so memory stays bounded for any bank.
    """
    k = min(k, len(bank))
    rows = max(1, SIMILARITIES_PER_CHUNK // len(bank))
    predictions = []
    for chunk in features.split(rows):
        similarity, nearest = (chunk @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(chunk), num_classes, device=chunk.device, dtype=similarity.dtype)
        votes.scatter_add_(1, bank_labels[nearest], (similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def embed(encoder: nn.Module, x: Tensor, pool: str = "mean") -> Tensor:
    """The L2-normalized features of a batch of encoder inputs, what k-NN compares: the output
    averaged over positions (``mean``) or all of it (``flatten``): ``readout``, as the head reads it."""
    y = encoder(x)
    return F.normalize(readout(pool, y.shape[1:])[0](y).float(), dim=1)


def pooled_features(
    encoder: nn.Module,
    images: Tensor,
    prepare: Callable[[Tensor], Tensor],
    batch_size: int,
    device: torch.device,
    pool: str = "mean",
) -> Tensor:
    """``embed`` of ``images``, ``batch_size`` at a time on ``device``, without gradients
    (``prepare`` turns a batch of stored images into the encoder's input there)."""
    with torch.no_grad():
        return torch.cat([embed(encoder, prepare(x.to(device)), pool) for x in images.split(batch_size)])


def probe_predict(
    features: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, steps: int = 100, weight_decay: float = 1e-4
) -> Tensor:
    """The classes a linear classifier (softmax regression) fitted on ``bank`` gives ``features``.

    Full-batch L-BFGS from zero weights: the same features give the same probe, and nothing is
    drawn from a random generator."""
    # Plain tensors, not nn.Linear: its initialization would draw from training's random stream.
    weight = torch.zeros(bank.shape[1], num_classes, device=bank.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=bank.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimizer.zero_grad()
        value = F.cross_entropy(bank @ weight + bias, bank_labels) + weight_decay * weight.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    with torch.no_grad():
        return (features @ weight + bias).argmax(dim=1)


class OnlineEval(L.Callback):
    """Logs ``val/knn_acc`` (and with ``probe``, ``val/probe_acc``) at the validation of every
    ``every_n_epochs``-th epoch and of the last: to the loggers, the progress bar and the results.

    The features are the encoder's pooled top block, in eval mode (every module's own mode is put
    back afterwards) and without gradients, of at most ``max_train_images`` labeled training images
    (the bank, drawn by ``seed`` from a generator of its own: training's random stream is never
    touched) and of every validation image. Under DDP each process evaluates the whole sets, so
    no process waits for another, and the value logged is their mean.
    """

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        k: int = 20,
        temperature: float = 0.07,
        max_train_images: int | None = 10000,
        probe: bool = False,
        seed: int = 0,
    ) -> None:
        self.every_n_epochs, self.k, self.temperature = every_n_epochs, k, temperature
        self.max_train_images, self.probe, self.seed = max_train_images, probe, seed
        self._bank: Tensor | None = None  # indices of the training images in the bank; None: nothing to measure

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.every_n_epochs:
            return
        data = trainer.datamodule
        train, val = getattr(data, "train_set", None), getattr(data, "val_set", None)
        why = None
        if val is None or not len(val.labels):
            why = "the data has no validation split (data.val_size=0)"
        elif not data.info.classes:
            why = "the data has no labels"
        elif not torch.isin(val.labels.unique(), train.labels).all():
            why = "some validation classes have no training images (data.split_by=class)"
        if why:
            rank_zero_info(f"online evaluation: {why}, so k-NN accuracy (val/knn_acc) is not measured")
            return
        count = len(train.labels)
        generator = torch.Generator().manual_seed(self.seed)
        bank = torch.randperm(count, generator=generator)[: self.max_train_images or count]
        self._bank = bank.sort().values

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bank is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs and epoch + 1 != trainer.max_epochs:
            return
        for name, value in self.evaluate(trainer, pl_module.encoder, pl_module.device).items():
            pl_module.log(f"val/{name}", value, prog_bar=True, sync_dist=True)

    def evaluate(self, trainer: L.Trainer, encoder: nn.Module, device: torch.device) -> dict[str, float]:
        """``knn_acc`` (and ``probe_acc``) of ``encoder``'s features, with its modules' modes left as they were."""
        data = trainer.datamodule
        train, val = data.train_set, data.val_set
        # Lightning validates in eval mode already; this holds wherever evaluate is called from.
        modes = {module: module.training for module in encoder.modules()}
        encoder.eval()
        try:
            # Training's batch size, which fits: on CPU a convolution's activations of eval_batch_size
            # (1024) images overflow the caches, and take twice as long per image as 128 (cnn, Fashion-MNIST).
            with trainer.precision_plugin.forward_context():
                bank, features = [
                    pooled_features(encoder, images, data.normalize, data.batch_size, device)
                    for images in (train.images[self._bank], val.images)
                ]
        finally:
            for module, mode in modes.items():
                module.training = mode
        bank_labels, labels = train.labels[self._bank].to(device), val.labels.to(device)
        args = (features, bank, bank_labels, len(data.info.classes))
        predictions = {"knn_acc": knn_predict(*args, k=self.k, temperature=self.temperature)}
        if self.probe:
            predictions["probe_acc"] = probe_predict(*args)
        return {name: (predicted == labels).float().mean().item() for name, predicted in predictions.items()}
