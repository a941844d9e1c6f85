"""Labeled, enlarged picture grids (pretrain/tasks/figures.py)."""

from __future__ import annotations

import torch

from pretrain.tasks.figures import PADDING, label_width, labeled_grid, title_height


def test_rows_are_enlarged_in_place_beside_their_labels_under_the_title():
    rows = [("original", torch.rand(3, 1, 5, 7)), ("a longer label", torch.rand(3, 1, 5, 7))]
    picture = labeled_grid(rows, title="epoch 0", scale=4)
    left, top = label_width([label for label, _ in rows]), title_height("epoch 0")
    row_h, row_w = (5 + 2 * PADDING) * 4, (3 * (7 + PADDING) + PADDING) * 4
    assert picture.shape == (3, top + 2 * row_h, left + row_w)
    for i, (_, images) in enumerate(rows):
        # the second image of the row, 4x4 blocks of each pixel (grey: the same in every channel)
        y, x = top + i * row_h + PADDING * 4, left + (2 * PADDING + 7) * 4
        shown = picture[0, y : y + 5 * 4, x : x + 7 * 4]
        expected = images[1, 0].repeat_interleave(4, 0).repeat_interleave(4, 1)
        assert torch.allclose(shown, expected, atol=1 / 255)
    assert picture[:, :top].min() < 1  # the title is drawn
    assert picture[:, top:, :left].min() < 1  # the labels are drawn


def test_no_title_no_title_strip():
    assert labeled_grid([("x", torch.rand(2, 3, 4, 4))], scale=2).shape == (3, (4 + 2) * 2, label_width(["x"]) + 11 * 2)
