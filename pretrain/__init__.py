"""Pretext: self-supervised pretraining of image encoders, up to an exported encoder file."""

__version__ = "0.1.0"
