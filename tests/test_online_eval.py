"""Online evaluation during pretraining: the k-NN vote and the probe, and the callback that logs them
without changing the training it watches."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import make_config
from lightning.pytorch.plugins.precision import Precision
from synthetic import ADAM, snapshot, trainer

import pretrain.run.callbacks.online_eval as online_eval
from pretrain.config.validate import ConfigError, validate_config
from pretrain.data.module import ImageDataModule
from pretrain.encoders import build_encoder
from pretrain.run.callbacks.online_eval import OnlineEval, embed, knn_predict, probe_predict
from pretrain.tasks.autoencoder import Autoencoder


def clusters(per_class: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three tight clusters of unit vectors around orthogonal directions, labels 0, 1, 2."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(3, 8)
    labels = torch.arange(3).repeat_interleave(per_class)
    return F.normalize(centers[labels] + 0.05 * torch.randn(len(labels), 8, generator=g), dim=1), labels


def test_knn_finds_well_separated_clusters():
    bank, bank_labels = clusters(seed=0)
    queries, labels = clusters(per_class=5, seed=1)
    assert torch.equal(knn_predict(queries, bank, bank_labels, num_classes=3), labels)
    assert torch.equal(knn_predict(queries, bank, bank_labels, num_classes=3, k=500), labels)  # k past the bank


def test_knn_votes_are_weighted_by_exp_similarity_over_temperature():
    # One neighbour of class 1 at similarity 1.0 against two of class 0 at 0.9: sharp weights
    # (T=0.07: e^(1/0.07) > 2 e^(0.9/0.07)) side with the nearest, nearly flat ones (T=1) with the majority.
    query = torch.tensor([[1.0, 0.0]])
    near, far = torch.tensor([1.0, 0.0]), torch.tensor([0.9, 0.19**0.5])
    bank, bank_labels = torch.stack([near, far, far]), torch.tensor([1, 0, 0])
    assert knn_predict(query, bank, bank_labels, 2, k=3, temperature=0.07).tolist() == [1]
    assert knn_predict(query, bank, bank_labels, 2, k=3, temperature=1.0).tolist() == [0]
    assert knn_predict(query, bank, bank_labels, 2, k=1, temperature=1.0).tolist() == [1]  # k bounds the vote


def test_knn_in_chunks_gives_the_same_votes(monkeypatch):
    bank, bank_labels = clusters(per_class=30, seed=0)
    queries, _ = clusters(per_class=10, seed=2)
    queries = F.normalize(queries + 0.5 * torch.randn(queries.shape, generator=torch.Generator().manual_seed(3)), dim=1)
    whole = knn_predict(queries, bank, bank_labels, 3, k=7)
    monkeypatch.setattr(online_eval, "SIMILARITIES_PER_CHUNK", 2 * len(bank))  # two query rows at a time
    assert torch.equal(knn_predict(queries, bank, bank_labels, 3, k=7), whole)


def test_embed_pools_over_positions_or_keeps_the_whole_map():
    maps = torch.randn(3, 4, 2, 2)
    mean, flat = embed(torch.nn.Identity(), maps, "mean"), embed(torch.nn.Identity(), maps, "flatten")
    assert mean.shape == (3, 4) and flat.shape == (3, 16)
    torch.testing.assert_close(mean, F.normalize(maps.mean((2, 3)), dim=1))
    torch.testing.assert_close(flat, F.normalize(maps.flatten(1), dim=1))


def test_probe_separates_linearly_separable_classes_and_draws_no_random_numbers():
    bank, bank_labels = clusters(seed=0)
    queries, labels = clusters(per_class=5, seed=1)
    state = torch.get_rng_state()
    assert torch.equal(probe_predict(queries, bank, bank_labels, 3), labels)
    assert torch.equal(torch.get_rng_state(), state)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def digits(**options) -> ImageDataModule:
    data = ImageDataModule("digits", **{"val_size": 0.1, "batch_size": 64, **options})
    data.setup("fit")
    return data


def task(data: ImageDataModule, seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    # Batch norm and dropout: a module left in train mode by the evaluation, or a random number drawn
    # by it, would change the weights.
    encoder = build_encoder("mlp", data.info.input_shape, widths=[32, 16], batch_norm=True, dropout=0.2)
    return Autoencoder(encoder=encoder, optimizer=ADAM, data=data.info)


def fit(tmp_path, callbacks=(), seed: int = 0, epochs: int = 2, **options):
    data = digits(hflip=True, max_shift=1, **options)
    model = task(data, seed)
    run = trainer(tmp_path, callbacks, max_epochs=epochs, limit_train_batches=3, deterministic=True)
    run.fit(model, datamodule=data)
    return run, model


def test_the_callback_logs_knn_and_probe_accuracy_of_the_trained_encoder(tmp_path):
    callback = OnlineEval(probe=True)
    run, model = fit(tmp_path, [callback])
    for name in ("val/knn_acc", "val/probe_acc"):
        assert name in run.callback_metrics and name in run.progress_bar_metrics
    # What it logged is what the encoder as trained gives, and well above chance (0.1).
    measured = callback.evaluate(run, model.encoder, model.device)
    assert run.callback_metrics["val/knn_acc"].item() == measured["knn_acc"] > 0.5
    assert run.callback_metrics["val/probe_acc"].item() == measured["probe_acc"] > 0.5


def test_training_is_the_same_with_and_without_the_callback(tmp_path):
    _, alone = fit(tmp_path / "a")
    _, watched = fit(tmp_path / "b", [OnlineEval(probe=True, max_train_images=100)])
    assert same(snapshot(alone), snapshot(watched))
    _, other = fit(tmp_path / "c", seed=1)  # the comparison can fail: another seed trains other weights
    assert not same(snapshot(alone), snapshot(other))


def test_it_measures_every_n_epochs_and_at_the_last(tmp_path, monkeypatch):
    epochs = []
    evaluate = OnlineEval.evaluate

    def recorded(self, trainer, encoder, device):
        epochs.append(trainer.current_epoch)
        return evaluate(self, trainer, encoder, device)

    monkeypatch.setattr(OnlineEval, "evaluate", recorded)
    fit(tmp_path, [OnlineEval(every_n_epochs=2)], epochs=5)
    assert epochs == [1, 3, 4]
    fit(tmp_path, [OnlineEval(every_n_epochs=None)], epochs=2)
    assert epochs == [1, 3, 4]  # null: never


def test_evaluation_leaves_every_module_in_its_mode_and_its_statistics_as_they_were():
    data = digits()
    encoder = task(data).encoder
    encoder.blocks.dense1.eval()  # a frozen block, as greedy layer-wise training has them
    modes = {name: m.training for name, m in encoder.named_modules()}
    state = snapshot(encoder)
    callback = OnlineEval()
    fake = SimpleNamespace(datamodule=data, precision_plugin=Precision())
    callback.setup(fake, None, "fit")
    assert set(callback.evaluate(fake, encoder, torch.device("cpu"))) == {"knn_acc"}
    assert {name: m.training for name, m in encoder.named_modules()} == modes
    assert encoder.training and not encoder.blocks.dense1.training
    assert same(snapshot(encoder), state)  # batch norm's running statistics too


@pytest.mark.parametrize(
    "options, why",
    [
        ({"val_size": 0}, "the data has no validation split"),
        ({"split_by": "class", "val_size": 2}, "some validation classes have no training images"),
    ],
)
def test_without_validation_images_of_training_classes_it_says_so_and_trains_on(tmp_path, caplog, options, why):
    caplog.set_level(logging.INFO)
    run, _ = fit(tmp_path, [OnlineEval()], epochs=1, **options)
    assert "val/knn_acc" not in run.callback_metrics and run.current_epoch == 1
    lines = [r.getMessage() for r in caplog.records if "online evaluation" in r.getMessage()]
    assert len(lines) == 1 and why in lines[0] and "val/knn_acc) is not measured" in lines[0]


def test_bad_settings_are_config_errors():
    cfg = make_config("pretrain", ["online_eval.k=0", "online_eval.temperature=0"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, "pretrain")
    assert "online_eval.k=0 must be at least 1" in str(err.value)
    assert "online_eval.temperature=0 must be positive" in str(err.value)
