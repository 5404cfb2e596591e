"""Labelled face datasets: UTKFace file names, `male/` and `female/` folders, or labels.csv.

Every layout becomes one list of LabelledImage; any other layout is a
DatasetLayoutError that says what was expected. A `labels.csv` (`file,gender`,
the webfaces layout) is evaluation data: files with an even number are its val
split (model selection, calibration), odd ones its test split (the report).
"""

import csv
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
GENDERS = ("male", "female")  # index = label; the model's output is P(female)
RACES = ("white", "black", "asian", "indian", "others")
AGE_BANDS = ((0, 12, "0-12"), (13, 17, "13-17"), (18, 39, "18-39"), (40, 59, "40-59"))
_UTK_NAME = re.compile(r"^(\d+)_([01])_(?:([0-4])_)?\d+")
LABELS_CSV = "labels.csv"
_NUMBER = re.compile(r"(\d+)")
_KAGGLE_TOPS = {"training": "train", "train": "train", "validation": "val", "val": "val"}


class DatasetLayoutError(ValueError):
    """The folder is neither UTKFace-named images nor male/ + female/ folders."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    gender: int
    age: int | None = None
    race: int | None = None
    split: str | None = None  # set by layouts that carry their own split

    @property
    def age_band(self) -> str | None:
        return age_band(self.age)

    @property
    def race_name(self) -> str | None:
        return None if self.race is None else RACES[self.race]


def age_band(age: int | None) -> str | None:
    if age is None:
        return None
    for low, high, name in AGE_BANDS:
        if low <= age <= high:
            return name
    return "60+"


def parse_utkface_name(name: str) -> tuple[int, int, int | None] | None:
    """`AGE_GENDER_RACE_DATETIME.jpg.chip.jpg` -> (age, gender, race); race may be missing."""
    match = _UTK_NAME.match(name)
    if not match:
        return None
    age, gender, race = match.groups()
    return int(age), int(gender), None if race is None else int(race)


def discover(root: Path) -> list[LabelledImage]:
    """All labelled images under `root`, sorted by path; raises DatasetLayoutError."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a directory")
    if (root / LABELS_CSV).is_file():
        return _discover_labels_csv(root / LABELS_CSV)
    kaggle = _discover_gender_folders(root)
    if kaggle:
        return kaggle
    images = []
    unlabelled = 0
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        parsed = parse_utkface_name(path.name)
        if parsed is None:
            unlabelled += 1
            continue
        age, gender, race = parsed
        images.append(LabelledImage(path=path, gender=gender, age=age, race=race))
    if not images:
        raise DatasetLayoutError(
            f"{root}: no labelled images found. Expected either `male/` and `female/` "
            "subfolders (optionally under Training/ and Validation/), or UTKFace file names "
            "AGE_GENDER_RACE_DATETIME.jpg"
            + (f" ({unlabelled} image files had other names)" if unlabelled else "")
        )
    return images


def _discover_labels_csv(listing: Path) -> list[LabelledImage]:
    """`file,gender` rows (gender male/female); the file's number picks val (even) or test."""
    images = []
    with open(listing, newline="") as handle:
        for row in csv.DictReader(handle):
            gender, number = row["gender"].strip().lower(), _NUMBER.search(row["file"])
            if gender not in GENDERS or number is None:
                raise DatasetLayoutError(
                    f"{listing}: row {row} needs a numbered file and a gender of male/female"
                )
            split = "val" if int(number.group(1)) % 2 == 0 else "test"
            images.append(
                LabelledImage(listing.parent / row["file"], GENDERS.index(gender), split=split)
            )
    return sorted(images, key=lambda image: image.path)


def _discover_gender_folders(root: Path) -> list[LabelledImage]:
    tops = [d for d in root.iterdir() if d.is_dir() and d.name.lower() in _KAGGLE_TOPS]
    bases: list[tuple[Path, str | None]] = [(top, _KAGGLE_TOPS[top.name.lower()]) for top in tops]
    images = []
    for base, split in sorted(bases, key=lambda pair: pair[0]) or [(root, None)]:
        folders = {d.name.lower(): d for d in base.iterdir() if d.is_dir()}
        present = [g for g in GENDERS if g in folders]
        if not present:
            continue
        if len(present) == 1:
            raise DatasetLayoutError(
                f"{base}: found `{present[0]}/` but not `{GENDERS[1 - GENDERS.index(present[0])]}/`"
            )
        for label, gender in enumerate(GENDERS):
            for path in sorted(folders[gender].rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    images.append(LabelledImage(path=path, gender=label, split=split))
    return images


def stratified_split(
    images: list[LabelledImage], seed: int = 1234, fractions: tuple[float, float] = (0.15, 0.15)
) -> dict[str, list[LabelledImage]]:
    """Seeded train/val/test split, stratified by gender, race and age band."""
    strata: dict[tuple[object, ...], list[LabelledImage]] = defaultdict(list)
    for image in images:
        strata[(image.gender, image.race, image.age_band)].append(image)
    rng = random.Random(seed)
    split: dict[str, list[LabelledImage]] = {"train": [], "val": [], "test": []}
    for key in sorted(strata, key=repr):
        members = sorted(strata[key], key=lambda i: i.path.name)
        rng.shuffle(members)
        n_val = round(len(members) * fractions[0])
        n_test = round(len(members) * fractions[1])
        split["val"] += members[:n_val]
        split["test"] += members[n_val : n_val + n_test]
        split["train"] += members[n_val + n_test :]
    return {name: sorted(items, key=lambda i: i.path.name) for name, items in split.items()}
