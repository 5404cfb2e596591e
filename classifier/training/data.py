"""Which images a run trains, validates and tests on, and their aligned crops.

Split rules, in order: a layout that names its own split (Kaggle's Training/
and Validation/) keeps it; a file named in the committed UTKFace lists
(classifier/splits/) takes that split, so the test images are the same for
every run and never reach training or model selection; anything else gets a
seeded stratified split of its own. Training and evaluation build the crop
cache over the same image list, so one cache serves both.
"""

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.training.crops import CropSet, load_or_build
from classifier.training.datasets import (
    DatasetLayoutError,
    LabelledImage,
    discover,
    stratified_split,
)

SPLITS = ("train", "val", "test")
SPLIT_LISTS = Path(__file__).parent.parent / "splits"  # package data of `classifier`
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitCrops:
    """One split's images and where their crops sit in the run's CropSet."""

    name: str
    images: list[LabelledImage]
    cropset: CropSet
    rows: np.ndarray  # row of each image in cropset.crops

    @property
    def labels(self) -> np.ndarray:
        return np.array([image.gender for image in self.images], dtype=np.int32)

    @property
    def found(self) -> np.ndarray:
        return self.cropset.found[self.rows]

    @property
    def no_face(self) -> int:
        return int((~self.found).sum())


def committed_splits() -> dict[str, str]:
    """File name -> split, from the committed lists (`<dataset>_<split>.txt`)."""
    assigned: dict[str, str] = {}
    for split in SPLITS:
        for listing in sorted(SPLIT_LISTS.glob(f"*_{split}.txt")):
            assigned.update(dict.fromkeys(listing.read_text().split(), split))
    return assigned


def assign_splits(images: Sequence[LabelledImage]) -> dict[str, list[LabelledImage]]:
    """Each image into train/val/test by the rules in the module docstring."""
    listed = committed_splits()
    result: dict[str, list[LabelledImage]] = {split: [] for split in SPLITS}
    rest = []
    for image in images:
        split = image.split or listed.get(image.path.name)
        if split is None:
            rest.append(image)
        else:
            result[split].append(image)
    if rest:
        for split, members in stratified_split(rest).items():
            result[split] += members
    return {split: sorted(members, key=_path) for split, members in result.items()}


def sample_splits(
    splits: dict[str, list[LabelledImage]], limit: int, seed: int
) -> dict[str, list[LabelledImage]]:
    """At most `limit` images per split, a seeded random sample, for quick runs."""
    rng = random.Random(seed)
    return {
        split: sorted(rng.sample(members, min(limit, len(members))), key=_path)
        for split, members in splits.items()
    }


def load_splits(
    data_dir: Path,
    limit: int | None = None,
    seed: int = 1234,
    only: Sequence[str] | None = None,
) -> dict[str, SplitCrops]:
    """Discover `data_dir`, split it and load (building if needed) the crops of every split.

    `only` restricts the result, and the crops built, to the named splits: an
    evaluation of the test split then never detects faces in the training images.
    """
    splits = assign_splits(discover(Path(data_dir)))
    if limit is not None:
        splits = sample_splits(splits, limit, seed)
    if only is not None:
        splits = {split: members for split, members in splits.items() if split in only}
    everything = sorted((image for members in splits.values() for image in members), key=_path)
    row_of = {image.path: row for row, image in enumerate(everything)}
    log.info(
        "%s: %s; loading aligned crops",
        data_dir,
        ", ".join(f"{len(members)} {split}" for split, members in splits.items()),
    )
    cropset = load_or_build([image.path for image in everything], progress=_progress_logger())
    return {
        split: SplitCrops(
            name=split,
            images=members,
            cropset=cropset,
            rows=np.array([row_of[image.path] for image in members], dtype=np.int64),
        )
        for split, members in splits.items()
    }


def require(splits: dict[str, SplitCrops], names: Sequence[str], data_dir: Path) -> None:
    """Raise DatasetLayoutError unless every split in `names` has at least one face."""
    for name in names:
        split = splits[name]
        if not split.images:
            hint = (
                " (a Training/ + Validation/ layout has no test split: use the val split)"
                if name == "test"
                else ""
            )
            raise DatasetLayoutError(f"{data_dir}: no images in the {name} split{hint}")
        if not split.found.any():
            raise DatasetLayoutError(
                f"{data_dir}: none of the {len(split.images)} {name} images has a face"
            )


def _path(image: LabelledImage) -> Path:
    return image.path


def _progress_logger() -> Callable[[int, int], None]:
    """A crop-building progress callback that logs every 5%."""
    last = -1

    def report(done: int, total: int) -> None:
        nonlocal last
        tick = done * 20 // max(total, 1)
        if tick != last:
            last = tick
            log.info("aligned crops: %d/%d images", done, total)

    return report
