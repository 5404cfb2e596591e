"""Pyramid levels of images of many sizes tiled onto a few canvases, one PNet call each.

Images of one size share PNet calls, one level of all of them at a time. An
image alone in its size (in a folder of mixed sizes, nearly every image)
made a call per level, and the work around each call cost more than PNet's
arithmetic. Tiled, its levels share the calls of the others'.

A level on a canvas scores as it would alone, for PNet is convolutional:
each level starts on an even row and column, so max-pooling pairs the same
pixels, and the canvas graph (`pnet_packed`) adds a mask after the first
layer that sinks every activation outside a level far below any real one.
A pooling cell at a level's odd edge then takes the level's own value, as
the lone level's "same" padding does, and every output cell of the level
reads nothing else. Output cells outside the levels are dropped.
"""

from dataclasses import dataclass

import numpy as np

# Added after PNet's first layer outside the levels: far below any activation there
# (a 3x3x3 convolution of inputs within +-1), and finite through the later layers.
SUNK = -1e4


@dataclass(frozen=True)
class Canvas:
    """Levels tiled on one PNet input."""

    pixels: np.ndarray  # (1, 3, H, W) float32
    mask: np.ndarray  # (1, 1, H - 2, W - 2) float32: 0 on the levels' first-layer cells
    owner: np.ndarray  # (H', W') int: per PNet output cell, its level's index, or -1
    origins: np.ndarray  # (all levels, 2): first output cell (row, col) of each level here


def tiled(levels: list[np.ndarray], budget: int) -> list[Canvas]:
    """Canvases of at most `budget` pixels (a larger level alone) holding the normalised
    levels (3, h, w), tallest first, in rows of levels side by side."""
    order = sorted(range(len(levels)), key=lambda i: -levels[i].shape[1])
    width = max(int(budget**0.5), *(_even(level.shape[2]) for level in levels))
    canvases: list[Canvas] = []
    placed: list[tuple[int, int, int]] = []  # (level, top, left) on the canvas being filled
    top = left = row_height = 0
    for index in order:
        height, level_width = (_even(side) for side in levels[index].shape[1:])
        if left + level_width > width:
            top, left, row_height = top + row_height, 0, 0
        if placed and (top + height) * width > budget:
            canvases.append(_canvas(levels, placed))
            placed, top, left, row_height = [], 0, 0, 0
        placed.append((index, top, left))
        left, row_height = left + level_width, max(row_height, height)
    if placed:
        canvases.append(_canvas(levels, placed))
    return canvases


def _canvas(levels: list[np.ndarray], placed: list[tuple[int, int, int]]) -> Canvas:
    height = max(top + _even(levels[i].shape[1]) for i, top, _ in placed)
    width = max(left + _even(levels[i].shape[2]) for i, _, left in placed)
    pixels = np.zeros((1, 3, height, width), np.float32)
    mask = np.full((1, 1, height - 2, width - 2), SUNK, np.float32)
    owner = np.full((_cells(height), _cells(width)), -1)
    origins = np.zeros((len(levels), 2), dtype=np.int64)
    for index, top, left in placed:
        level = levels[index]
        rows, cols = level.shape[1:]
        pixels[0, :, top : top + rows, left : left + cols] = level
        mask[0, 0, top : top + rows - 2, left : left + cols - 2] = 0
        owner[top // 2 : top // 2 + _cells(rows), left // 2 : left // 2 + _cells(cols)] = index
        origins[index] = top // 2, left // 2
    return Canvas(pixels, mask, owner, origins)


def _even(side: int) -> int:
    return side + (side & 1)


def _cells(side: int) -> int:
    """PNet's output cells along a side of `side` pixels: 3x3, 2x2 pooling (same), 3x3, 3x3."""
    return (side - 1) // 2 - 4
