"""A GAN whose discriminator is the encoder plus a real/fake head: its blocks are what gets exported.

The generator is DCGAN-style (a linear map of the noise to a small feature map, then
stride-2 transposed convolutions with batch norm), sized to the data's input shape, and
ends in 0..1 pixels that are normalized like real images before the discriminator sees
them. The losses are the non-saturating ones. Stabilizers, each an option: DCGAN's Adam
settings (``optimizer_args``, over conf/optimizer's), one-sided label smoothing, spectral
norm on the discriminator's linear and convolutional layers, and instance noise.

Two optimizers means manual optimization in Lightning 2, where the Trainer's gradient
clipping does not apply (and Lightning refuses ``Trainer(gradient_clip_val=...)``): this
task takes the Trainer's configured clipping over and applies it to each network's
gradient before its optimizer step, so ``trainer.gradient_clip_val`` works as for any task.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as add_spectral_norm
from torch.optim import Optimizer

from pretrain.data.module import DataInfo
from pretrain.encoders import Encoder, GlobalPool, build_encoder, feature_dim
from pretrain.tasks.base import OptimizerFactory, PretextTask

SAMPLES = 64


class Generator(nn.Sequential):
    """Noise ``(N, latent_dim)`` to 0..1 images of ``output_shape`` (C, H, W), DCGAN-style.

    ``upsamplings`` stride-2 transposed convolutions from a ``ceil(H / 2**u) x ceil(W / 2**u)``
    map of ``width`` channels, halving the channels each time; a final crop takes sizes that
    are not multiples of ``2**u`` back to (H, W).
    """

    def __init__(self, latent_dim: int, output_shape: Sequence[int], width: int = 128, upsamplings: int = 2) -> None:
        channels, height, width_px = (int(d) for d in output_shape)
        scale = 2**upsamplings
        start = (math.ceil(height / scale), math.ceil(width_px / scale))
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, width * start[0] * start[1], bias=False),
            nn.Unflatten(1, (width, *start)),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        c_in = width
        for i in range(upsamplings):
            last = i == upsamplings - 1
            c_out = channels if last else max(c_in // 2, 8)
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        layers.append(nn.Sigmoid())
        super().__init__(*layers)
        self.output_size = (height, width_px)

    def forward(self, z: Tensor) -> Tensor:
        images = super().forward(z)
        return images[..., : self.output_size[0], : self.output_size[1]]


class GAN(PretextTask):
    name = "gan"

    def __init__(
        self,
        encoder: Encoder,
        optimizer: OptimizerFactory,
        data: DataInfo,
        latent_dim: int = 64,
        generator_width: int = 64,
        generator_upsamplings: int = 2,
        spectral_norm: bool = False,
        label_smoothing: float = 0.1,
        instance_noise: float = 0.0,
        generator_lr_factor: float = 1.0,
        optimizer_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(encoder, optimizer, data)
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"task.label_smoothing must be in [0, 0.5), not {label_smoothing}")
        self.automatic_optimization = False
        self.spectral_norm, self.label_smoothing = spectral_norm, label_smoothing
        self.instance_noise, self.generator_lr_factor = instance_noise, generator_lr_factor
        self.latent_dim = latent_dim
        # Plain values: they end up in the optimizers' state, which checkpoints store.
        self.optimizer_args = OmegaConf.to_container(OmegaConf.create(dict(optimizer_args or {})))
        self.head = nn.Sequential(GlobalPool(), nn.Linear(feature_dim(encoder.block_shapes()[-1]), 1))
        if spectral_norm:
            for module in [*encoder.modules(), *self.head.modules()]:
                if isinstance(module, nn.Linear | nn.Conv2d) and not parametrize.is_parametrized(module):
                    add_spectral_norm(module)
        self.generator = Generator(latent_dim, data.input_shape, generator_width, generator_upsamplings)
        self.register_buffer("mean", torch.tensor(data.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data.std).view(1, -1, 1, 1), persistent=False)
        # The same noise every epoch, so that the sample grids show the generator's progress.
        self.register_buffer(
            "sample_noise", torch.randn(SAMPLES, latent_dim, generator=torch.Generator().manual_seed(0))
        )
        self.held_clip_val: float | None = None

    # --- the two networks ----------------------------------------------------------------------

    def discriminate(self, images: Tensor) -> Tensor:
        """Real/fake logits ``(N,)`` of normalized images."""
        if self.instance_noise and self.training:
            images = images + self.instance_noise * torch.randn_like(images)
        return self.head(self.encoder(images)).squeeze(1)

    def generate(self, z: Tensor) -> Tensor:
        """Normalized fake images, as the discriminator sees real ones."""
        return (self.generator(z) - self.mean) / self.std

    def exported_encoder(self) -> Encoder:
        if not self.spectral_norm:
            return self.encoder
        # A plain encoder holding each spectrally normalized weight as the discriminator uses it
        # (W / sigma): it computes what the discriminator's encoder does, under the plain
        # architecture's tensor names. (torch's remove_parametrizations is no use on a copy:
        # the copy shares its parametrized class with the original.)
        spec = self.encoder.spec()
        plain = build_encoder(spec["arch"], spec["input_shape"], depth=spec["depth"], **spec["options"])
        was_training = self.encoder.training
        self.encoder.eval()  # spectral norm's power iteration runs in training mode only
        with torch.no_grad():
            state = {}
            for key in plain.state_dict():
                owner, _, leaf = key.rpartition(".")
                state[key] = getattr(self.encoder.get_submodule(owner), leaf).detach().clone()
        self.encoder.train(was_training)
        plain.load_state_dict(state)
        return plain.train(was_training)

    # --- losses --------------------------------------------------------------------------------

    def discriminator_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """Binary cross-entropy, real images labelled ``1 - label_smoothing`` (one-sided smoothing)."""
        real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, 1 - self.label_smoothing))
        return real + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))

    @staticmethod
    def generator_loss(fake_logits: Tensor) -> Tensor:
        """Non-saturating: maximize log D(G(z)) rather than minimize log(1 - D(G(z)))."""
        return F.softplus(-fake_logits).mean()

    # --- training ------------------------------------------------------------------------------

    def configure_callbacks(self) -> list[Callback]:
        # Lightning checks Trainer(gradient_clip_val) against manual optimization right after this
        # hook, and raises. This task clips by itself with those very values (in _step_optimizer),
        # so it holds them through the check and gives them back in setup.
        if self.trainer.gradient_clip_val:
            self.held_clip_val, self.trainer.gradient_clip_val = self.trainer.gradient_clip_val, None
        return []

    def setup(self, stage: str) -> None:
        if self.held_clip_val is not None:
            self.trainer.gradient_clip_val, self.held_clip_val = self.held_clip_val, None
        if stage == "fit":
            self.require_unused_parameters("each of its two steps leaves the other network's parameters unused")

    def configure_optimizers(self) -> list[Optimizer]:
        make = functools.partial(self.optimizer_factory, **self.optimizer_args)
        try:
            # Named groups: the logged learning rates read lr-Adam/discriminator, lr-Adam-1/generator.
            discriminator = make(
                [{"params": [*self.encoder.parameters(), *self.head.parameters()], "name": "discriminator"}]
            )
        except TypeError as err:
            raise ValueError(
                f"task.optimizer_args {self.optimizer_args} do not fit the chosen optimizer ({err}): "
                "change them, or set task.optimizer_args={} to use conf/optimizer's values as they are"
            ) from None
        generator = make([{"params": list(self.generator.parameters()), "name": "generator"}])
        for group in generator.param_groups:
            group["lr"] *= self.generator_lr_factor
        return [discriminator, generator]

    def _step_optimizer(self, optimizer: Any, loss: Tensor) -> None:
        self.toggle_optimizer(optimizer)  # the other network gets no gradient
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(optimizer)  # the Trainer's gradient_clip_val / gradient_clip_algorithm
        optimizer.step()
        self.untoggle_optimizer(optimizer)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        real, _ = batch
        opt_d, opt_g = self.optimizers()
        z = torch.randn(len(real), self.latent_dim, device=real.device)
        fake = self.generate(z)
        real_logits, fake_logits = self.discriminate(real), self.discriminate(fake.detach())
        loss_d = self.discriminator_loss(real_logits, fake_logits)
        self._step_optimizer(opt_d, loss_d)
        loss_g = self.generator_loss(self.discriminate(fake))
        self._step_optimizer(opt_g, loss_g)
        self.log_train(
            {
                "loss": loss_d,
                "loss_d": loss_d,
                "loss_g": loss_g,
                "d_real": torch.sigmoid(real_logits).mean(),
                "d_fake": torch.sigmoid(fake_logits).mean(),
            },
            len(real),
        )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        real, _ = batch
        z = torch.randn(len(real), self.latent_dim, generator=torch.Generator().manual_seed(batch_idx))
        fake_logits = self.discriminate(self.generate(z.to(real.device)))
        real_logits = self.discriminate(real)
        accuracy = torch.cat([real_logits > 0, fake_logits < 0]).float().mean()
        self.log_dict(
            {
                "val/loss_d": self.discriminator_loss(real_logits, fake_logits),
                "val/loss_g": self.generator_loss(fake_logits),
                "val/d_acc": accuracy,
            },
            on_epoch=True,
        )

    def preview_rows(self) -> list[tuple[str, Tensor]]:
        """The generator's images of ``sample_noise``, 8 a row, labeled by their noise vectors."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            samples = self.generator(self.sample_noise)
        self.train(was_training)
        return [(f"noise {i}-{i + 7}", samples[i : i + 8]) for i in range(0, len(samples), 8)]

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.save_figure(
            f"samples/epoch_{self.current_epoch:03d}.png",
            self.preview_rows(),
            title=f"epoch {self.current_epoch}: generated from the same noise every epoch",
        )
