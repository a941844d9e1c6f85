"""Pretext tasks: one LightningModule per file, each exposing ``.encoder``."""
