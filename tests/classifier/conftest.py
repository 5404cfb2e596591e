"""What the classifier tests that train share: a cache of their own and UTKFace subsets."""

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from classifier.training.data import SPLIT_LISTS


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private FACEGENDER_CACHE per test module: the crops and features it uses, it builds."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACEGENDER_CACHE", str(folder))
        yield folder


def utkface_subset(target: Path, data_dir: Path, counts: dict[str, int], seed: int) -> Path:
    """Symlinks in `target` to a seeded sample of `counts[split]` files of each committed
    UTKFace split list."""
    rng = random.Random(seed)
    for split, count in counts.items():
        names = (SPLIT_LISTS / f"utkface_{split}.txt").read_text().split()
        for name in rng.sample(names, count):
            (target / name).symlink_to(data_dir / "utkface" / name)
    return target
