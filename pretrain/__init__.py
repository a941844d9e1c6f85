"""Pretext: self-supervised pretraining of image encoders, up to an exported encoder file.

The commands (``python -m pretrain``, ``pretrain.prepare``, ``pretrain.export``, ``pretrain.portable``)
are thin layers over these parts, which ``finetune`` builds on too:

- ``data``: images from their sources, selected, batched and augmented, served by the data modules;
- ``encoders``: the backbones (mlp, cnn, resnet, vit), each a stack of blocks;
- ``tasks``: the pretext tasks, one LightningModule each, and the linear classification fine-tuning shares;
- ``assemble``: the data module, an encoder and the model on it, put together from a config;
- ``encoder_file``: the exported encoder: its format and checks, from a checkpoint, as a portable program;
- ``config``: configs composed and checked before any work;
- ``run``: what runs a command: errors and exit statuses, run folders, the Trainer, resuming, faults.
"""

__version__ = "0.1.0"
