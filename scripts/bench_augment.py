"""SimCLR's augmentation of a batch of 256 images, drawn per image, two ways: torchvision's v2
transforms applied image by image (the per-image randomness v2 gives), against
``pretrain.data.augment.Augment`` on the whole batch. Seconds per batch, best of ``--repeats``.

    python -m scripts.bench_augment  # 28x28 grayscale and 96x96 RGB, on the CPU
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.transforms import v2

from pretrain.data.augment import TRANSFORMS, Augment

BATCH = 256


def per_image_v2(size: int) -> v2.Transform:
    blur = TRANSFORMS["blur"]
    jitter = {k: v for k, v in TRANSFORMS["jitter"].items() if k != "p"}
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=TRANSFORMS["crop"]["scale"], ratio=TRANSFORMS["crop"]["ratio"]),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(**jitter)], p=TRANSFORMS["jitter"]["p"]),
            v2.RandomGrayscale(p=TRANSFORMS["grayscale"]["p"]),
            v2.RandomApply([v2.GaussianBlur(max(3, size // 10 // 2 * 2 + 1), blur["sigma"])], p=blur["p"]),
        ]
    )


def best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if out.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    batched = Augment({name: {} for name in TRANSFORMS}, hflip=True)
    for channels, size in ((1, 28), (3, 96)):
        images = torch.randint(0, 256, (BATCH, channels, size, size), dtype=torch.uint8, device=args.device)
        loop = per_image_v2(size)
        looped = best(lambda x=images, f=loop: torch.stack([f(img) for img in x]), args.repeats)
        whole = best(lambda x=images: batched(x), args.repeats)
        print(f"{channels}x{size}x{size}: per image (v2) {looped:.3f} s, batched {whole:.3f} s, {looped / whole:.1f}x")


if __name__ == "__main__":
    main()
