"""Supervised pretraining on an auxiliary labeled task (Géron's "model A")."""

from __future__ import annotations

from pretrain.tasks.classifying import LinearClassification


class Supervised(LinearClassification):
    """The encoder trained as a classifier of the pretraining data's labels, for its features."""

    name = "supervised"
