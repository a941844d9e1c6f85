"""``eval=knn``: a classifier without training. Each test image takes the class of its nearest labeled
training images by the encoder's features (``pretrain.run.callbacks.online_eval``'s k-NN: cosine similarity,
votes weighted by ``exp(similarity / temperature)``)."""

from __future__ import annotations

import lightning as L
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from pretrain.encoders import Encoder
from pretrain.run.callbacks.online_eval import embed, knn_predict, pooled_features


class KNNClassifier(L.LightningModule):
    """Tested with ``Trainer.test`` only: the labeled training images of the data module are the
    bank, embedded once at the start of the test; ``test/acc`` is logged as the classifier's is."""

    def __init__(
        self, encoder: Encoder, num_classes: int, k: int = 20, temperature: float = 0.07, pool: str = "mean"
    ) -> None:
        super().__init__()
        self.encoder, self.num_classes, self.k, self.temperature = encoder, num_classes, k, temperature
        self.pool = pool
        self.accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.bank: Tensor | None = None
        self.bank_labels: Tensor | None = None

    def on_test_start(self) -> None:
        data = self.trainer.datamodule
        train = data.train_set
        with self.trainer.precision_plugin.forward_context():
            self.bank = pooled_features(
                self.encoder, train.images, data.normalize, data.batch_size, self.device, self.pool
            )
        self.bank_labels = train.labels.to(self.device)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch  # normalized by the data module on the way in
        features = embed(self.encoder, images, self.pool)
        predicted = knn_predict(features, self.bank, self.bank_labels, self.num_classes, self.k, self.temperature)
        self.accuracy(predicted, labels)
        self.log("test/acc", self.accuracy, batch_size=len(labels))
