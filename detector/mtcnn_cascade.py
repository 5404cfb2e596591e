"""MTCNN's three stages over a few detection images of any sizes, on ONNX Runtime.

PNet runs over each image's scale pyramid (images of one size and border
share each call; the levels of an image alone in its size are tiled with
others' on shared canvases, detector.mtcnn_canvas), then RNet and ONet each
refine the proposals of all the images at once, on crops taken from the
normalised images. The stages follow the `mtcnn` package's `StagePNet`,
`StageRNet` and `StageONet` step for step with its default NMS thresholds,
so the faces are the package's, to float rounding; nothing is kept per
image size, so any mix of sizes costs no more than its pixels.
"""

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from detector.mtcnn_boxes import (
    clip,
    nms,
    place_landmarks,
    proposals,
    regress,
    scale_pyramid,
    square,
    windows,
)
from detector.mtcnn_canvas import tiled
from detector.mtcnn_images import (
    axis_weights,
    crop_and_resize,
    level,
    level_size,
    normalise,
    stacked,
)
from detector.mtcnn_onnx import MtcnnNetworks

# The package's defaults for what the detector does not expose as settings.
_SCALE_FACTOR = 0.709
_NMS_PNET_SCALE, _NMS_PNET, _NMS_RNET, _NMS_ONET = 0.5, 0.7, 0.7, 0.7
# Input pixels per network call: PNet's pyramid levels go a few images at a time (a large
# level alone), RNet's and ONet's crops 64 and 16 at a time. Activations of larger calls
# outgrow the core's cache: on one thread of a Zen 4 core, PNet took 46-60 ns a level pixel
# in calls of 5,000-40,000 pixels and 86-93 in calls of 260,000 (four 258 x 258 levels),
# RNet 57-66 us a crop in calls of 32-64 against 96 in calls of 512, ONet 366 us against 421
# in calls of 128.
_NET_PIXELS = 16 * 48 * 48


@dataclass(frozen=True)
class _Lone:
    """A pyramid level of one image, to be tiled: its pixels (3, h, w), its group in the
    per-level NMS, the image, its rows and columns of the whole level, and its scale."""

    pixels: np.ndarray
    group: int
    image: int
    rows: range
    cols: range
    scale: float


class Cascade:
    """PNet -> RNet -> ONet; the networks load once and are safe to share between threads."""

    def __init__(self, threads: int = 0) -> None:
        self._nets = MtcnnNetworks(threads)
        # PNet's face score for a window of pure padding (black).
        black = np.full((1, 3, 12, 12), -127.5 / 128, np.float32)
        self._padding_score = float(self._nets.pnet(black)[1][0, 0, 0])

    def detect(
        self,
        images: Sequence[np.ndarray],
        pads: Sequence[int],
        min_face_size: int,
        thresholds: tuple[float, float, float],
    ) -> np.ndarray:
        """Rows [image, x1, y1, x2, y2, score, 5 xs, 5 ys] in pixels of each RGB uint8 image.

        `pads` is the black border around each image (0: none, or unknown);
        `thresholds` are PNet's, RNet's and ONet's.
        """
        boxes = self._propose(images, pads, min_face_size, thresholds[0])
        if not len(boxes):
            return np.empty((0, 16))
        # Only the images with proposals are cropped from, so only they are normalised.
        normalised = {int(i): normalise(images[int(i)]) for i in np.unique(boxes[:, 0])}
        offsets, scores = self._refine(self._nets.rnet, normalised, boxes, 24)
        boxes[:, 5] = scores
        boxes = regress(boxes, offsets)
        boxes = boxes[boxes[:, 5] > thresholds[1]]
        boxes = square(nms(boxes, _NMS_RNET, "union", sort=True))
        if not len(boxes):
            return np.empty((0, 16))
        offsets, landmarks, scores = self._refine(self._nets.onet, normalised, boxes, 48)
        landmarks = place_landmarks(landmarks, boxes)
        boxes[:, 5] = scores
        boxes = np.concatenate([regress(boxes, offsets), landmarks], axis=-1)
        boxes = boxes[boxes[:, 5] > thresholds[2]]
        boxes = nms(boxes, _NMS_ONET, "min", sort=True)
        shapes = np.array([image.shape[:2] for image in images])[boxes[:, 0].astype(int)]
        return clip(boxes, shapes[:, 0], shapes[:, 1])

    def _propose(
        self,
        images: Sequence[np.ndarray],
        pads: Sequence[int],
        min_face_size: int,
        threshold: float,
    ) -> np.ndarray:
        """PNet over each image's scale pyramid: the squared proposals of all the images.

        PNet only sees the part of each level where its windows are at least
        half inside the image (detector.mtcnn_boxes.reach), unless the
        threshold is so low that a window of pure black border could pass it
        (checked at load): then it sees the whole level.
        """
        groups: dict[tuple[tuple[int, ...], int], list[int]] = defaultdict(list)
        for index, (image, pad) in enumerate(zip(images, pads, strict=True)):
            groups[image.shape, pad].append(index)
        found = []
        levels = 0  # (level, image) pairs so far: each is one group of the per-level NMS
        lone: list[_Lone] = []  # levels of images alone in their size: see `_tiled`
        for ((height, width, _), pad), members in groups.items():
            crop = pad > 0 and threshold > 10 * self._padding_score
            pixels = stacked(
                np.stack([images[i][pad : height - pad, pad : width - pad] for i in members])
            )
            scales = scale_pyramid(width, height, min_face_size, _SCALE_FACTOR)
            if not len(scales):
                continue  # a thumbnail smaller than PNet's window: no level, no face
            sizes = [level_size(height, width, scale) for scale in scales]
            row_parts = axis_weights(height, pad, tuple(h for h, _ in sizes), crop)
            col_parts = axis_weights(width, pad, tuple(w for _, w in sizes), crop)
            for scale, (rows, row_weights), (cols, col_weights) in zip(
                scales, row_parts, col_parts, strict=True
            ):
                if min(len(rows), len(cols)) < 12:
                    continue  # no PNet window fits
                pyramid_level = level(pixels, len(members), row_weights, col_weights)
                if len(members) == 1 and len(rows) * len(cols) <= _NET_PIXELS:
                    lone.append(_Lone(pyramid_level[0], levels, members[0], rows, cols, scale))
                    levels += 1
                    continue
                boxes = proposals(*self._pnet(pyramid_level), threshold)
                if len(boxes):
                    owners = np.asarray(members, dtype=np.float64)[boxes[:, 0].astype(int)]
                    boxes[:, 0] += levels
                    boxes[:, [1, 3]] += cols.start
                    boxes[:, [2, 4]] += rows.start
                    boxes[:, 1:5] /= scale
                    found.append(np.column_stack([boxes, owners]))
                levels += len(members)
        if lone:
            found += self._tiled(lone, threshold)
        if not found:
            return np.empty((0, 6))
        # The package's NMS within each level of each image, all in one call.
        boxes = nms(np.concatenate(found), _NMS_PNET_SCALE, "union", sort=False)
        boxes = np.c_[boxes[:, 6], boxes[:, 1:6]]  # rows are the images' again
        return square(nms(boxes, _NMS_PNET, "union", sort=True))

    def _tiled(self, lone: list[_Lone], threshold: float) -> list[np.ndarray]:
        """`_propose`'s rows for the levels of images alone in their size, tiled on canvases
        (detector.mtcnn_canvas)."""
        group = np.asarray([entry.group for entry in lone], dtype=np.float64)
        image = np.asarray([entry.image for entry in lone], dtype=np.float64)
        row_start = np.asarray([entry.rows.start for entry in lone], dtype=np.float64)
        col_start = np.asarray([entry.cols.start for entry in lone], dtype=np.float64)
        scale = np.asarray([entry.scale for entry in lone])
        found = []
        for canvas in tiled([entry.pixels for entry in lone], _NET_PIXELS):
            offsets, scores = self._nets.pnet_packed(canvas.pixels, canvas.mask)
            cell_row, cell_col = np.nonzero((scores[0] > threshold) & (canvas.owner >= 0))
            if not len(cell_row):
                continue
            owner = canvas.owner[cell_row, cell_col]
            row, col = cell_row - canvas.origins[owner, 0], cell_col - canvas.origins[owner, 1]
            boxes = windows(
                row, col, offsets[0][:, cell_row, cell_col].T, scores[0][cell_row, cell_col]
            )
            # Best first within each level, ties ordered as a level alone orders them (a tie's
            # order decides which box the NMS keeps).
            by_level = np.argsort(owner, kind="stable")
            starts = np.flatnonzero(np.diff(owner[by_level], prepend=-1))
            order = np.concatenate(
                [part[np.argsort(boxes[part, 4])[::-1]] for part in np.split(by_level, starts[1:])]
            )
            boxes, owner = np.c_[group[owner], boxes, image[owner]][order], owner[order]
            boxes[:, [1, 3]] += col_start[owner, None]
            boxes[:, [2, 4]] += row_start[owner, None]
            boxes[:, 1:5] /= scale[owner, None]
            found.append(boxes)
        return found

    def _pnet(self, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """PNet's (offsets, scores) for a level of several images, a few images a call."""
        step = max(1, _NET_PIXELS // (level.shape[2] * level.shape[3]))
        offsets, scores = _in_slices(lambda part: self._nets.pnet(level[part]), len(level), step)
        return offsets, scores

    @staticmethod
    def _refine(
        network: Callable[[np.ndarray], tuple[np.ndarray, ...]],
        normalised: dict[int, np.ndarray],
        boxes: np.ndarray,
        size: int,
    ) -> list[np.ndarray]:
        """`network`'s outputs for the size x size crop of every box, a slice at a time."""

        def crops_of(part: slice) -> tuple[np.ndarray, ...]:
            return network(_crops(normalised, boxes[part], size))

        return _in_slices(crops_of, len(boxes), _NET_PIXELS // size**2)


def _in_slices(
    run: Callable[[slice], tuple[np.ndarray, ...]], count: int, step: int
) -> list[np.ndarray]:
    """`run`'s outputs for items [0, count), called on slices of `step`, joined."""
    parts = [run(slice(start, start + step)) for start in range(0, count, step)]
    if len(parts) == 1:
        return list(parts[0])
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def _crops(normalised: dict[int, np.ndarray], boxes: np.ndarray, size: int) -> np.ndarray:
    """The package's `extract_patches`: each box's crop of its own image, resized bilinearly."""
    crops = np.empty((len(boxes), size, size, 3), np.float32)
    owners = boxes[:, 0].astype(int)
    for owner in np.unique(owners):
        mine = owners == owner
        height, width = normalised[owner].shape[:2]
        corners = boxes[mine][:, [2, 1, 4, 3]] / np.array([[height, width, height, width]])
        crops[mine] = crop_and_resize(normalised[owner], corners.astype(np.float32), size)
    return crops
