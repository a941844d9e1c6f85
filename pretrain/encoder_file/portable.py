"""An encoder file as a self-contained program that needs only torch (``python -m pretrain.portable``).

``torch.export`` traces raw images -> normalization by the file's mean and std -> the encoder's
blocks -> one feature vector per image, for any batch size, into a ``.pt2`` file. Elsewhere::

    features = torch.export.load("encoder.pt2").module()(images)  # uint8 (B, C, H, W) -> (B, D)

No Pretext, no Python class of ours: the file holds the graph and the weights. It is written only
after it gives the same features as the encoder file on a test batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pretrain.encoder_file.format import EncoderFile
from pretrain.encoders import Encoder, readout


class Features(nn.Module):
    """uint8 images (0..255) to the encoder's pooled (``mean``) or flattened features."""

    def __init__(self, encoder: Encoder, mean: list[float], std: list[float], pool: str) -> None:
        super().__init__()
        self.encoder, self.pool = encoder.eval(), readout(pool, encoder.block_shapes()[-1])[0]
        # (x / 255 - mean) / std as one multiply-add, in buffers so that the program carries them.
        std_t = torch.tensor(std).view(-1, 1, 1)
        self.register_buffer("scale", 1 / (255 * std_t))
        self.register_buffer("shift", torch.tensor(mean).view(-1, 1, 1) / std_t)

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.encoder(images.float() * self.scale - self.shift))


def portable(loaded: EncoderFile, blocks: int | None = None, pool: str = "mean") -> torch.export.ExportedProgram:
    """The exported program of ``loaded``'s lower ``blocks`` (default all), checked against ``loaded.features``."""
    encoder = loaded.encoder if blocks is None else loaded.encoder.truncated(blocks)
    model = Features(encoder, loaded.mean, loaded.std, pool)
    example = torch.randint(0, 256, (2, *encoder.input_shape), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    check = torch.randint(
        0, 256, (3, *encoder.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    expected = loaded.features(check, blocks, pool)
    if not torch.allclose(program.module()(check), expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError("the exported program's features differ from the encoder file's; nothing was written")
    return program
