"""k-NN accuracy of frozen features on Fashion-MNIST: an encoder file, a random backbone, or raw pixels.

Features are the ``GlobalPool``-ed output of the encoder's last block (eval mode), L2-normalized;
each test image takes the k most cosine-similar training images, weighted ``exp(sim / tau)``
(Wu et al. 2018, as DINO's k-NN), and the class with the largest weight wins. The bank is
every training image, the queries every test image.

    python scripts/knn_eval.py --encoder outputs/pretrain/.../encoder.safetensors
    python scripts/knn_eval.py --random cnn --seed 0
    python scripts/knn_eval.py --pixels

A local measuring script of the contrastive task's report (the shared k-NN callback lives
elsewhere); ``--limit-bank`` and ``--limit-test`` take the first N images for quick comparisons.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.data import channel_stats, load_source, normalize  # noqa: E402
from pretrain.encoders import GlobalPool, build_encoder  # noqa: E402
from pretrain.export import load_encoder  # noqa: E402


@torch.no_grad()
def features(encoder: torch.nn.Module | None, images: torch.Tensor, mean, std, batch: int = 1000) -> torch.Tensor:
    pool = GlobalPool()
    out = []
    for start in range(0, len(images), batch):
        x = normalize(images[start : start + batch], mean, std)
        out.append(pool(encoder(x)) if encoder is not None else x.flatten(1))
    return F.normalize(torch.cat(out), dim=1)


@torch.no_grad()
def knn_accuracy(bank, bank_labels, queries, query_labels, k: int = 20, tau: float = 0.07, chunk: int = 1000) -> float:
    classes = int(bank_labels.max()) + 1
    correct = 0
    for start in range(0, len(queries), chunk):
        sim, index = (queries[start : start + chunk] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), classes).scatter_add_(1, bank_labels[index], (sim / tau).exp())
        correct += int((votes.argmax(1) == query_labels[start : start + chunk]).sum())
    return correct / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--encoder", help="an encoder.safetensors")
    what.add_argument("--random", metavar="ARCH", help="this backbone with random weights (default options)")
    what.add_argument("--pixels", action="store_true", help="the normalized pixels themselves")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random's weights")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--tau", type=float, default=0.07)
    parser.add_argument("--limit-bank", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    args = parser.parse_args()

    train, test = load_source(args.data)
    mean, std = channel_stats(train.images)
    encoder = None
    if args.encoder:
        file = load_encoder(args.encoder)
        encoder, mean, std = file.encoder, file.mean, file.std
    elif args.random:
        torch.manual_seed(args.seed)
        encoder = build_encoder(args.random, tuple(train.images.shape[1:]))
    if encoder is not None:
        encoder.eval()
    bank, test_images = train.images[: args.limit_bank], test.images[: args.limit_test]
    accuracy = knn_accuracy(
        features(encoder, bank, mean, std),
        train.labels[: len(bank)],
        features(encoder, test_images, mean, std),
        test.labels[: len(test_images)],
        args.k,
        args.tau,
    )
    print(f"k-NN accuracy (k={args.k}, tau={args.tau}, bank {len(bank)}, test {len(test_images)}): {accuracy:.4f}")


if __name__ == "__main__":
    main()
