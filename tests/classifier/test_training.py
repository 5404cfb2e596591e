"""Training and evaluation on a small real UTKFace subset: real Keras, real detector, real cache.

One short run (224x224 as in the product, one epoch, a few unfrozen layers)
is shared by the tests that inspect what it wrote. The crop cache lives in a
temporary folder, so the tests build their own from the real images.
"""

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from classifier.runtime import GenderClassifier
from classifier.runtime.metadata import read_metadata
from classifier.training import train as training
from classifier.training.augmentation import Augmentation
from classifier.training.backbones import BACKBONES, BackboneError, build_backbone
from classifier.training.data import SPLIT_LISTS, assign_splits, load_splits
from classifier.training.datasets import DatasetLayoutError, discover
from classifier.training.evaluation import evaluate
from classifier.training.feeding import CropBatches
from classifier.training.metrics import (
    expected_calibration_error,
    fit_temperature,
    roc_auc,
    roc_curve,
)
from classifier.training.train import (
    FLIP_GATES,
    ResumeError,
    TrainConfig,
    build_model,
    compile_model,
    train,
)
from tests.classifier.conftest import utkface_subset
from worker.training_commands import evaluate as evaluate_command
from worker.training_commands import train as train_command

SUBSET = {"train": 160, "val": 48, "test": 32}


@pytest.fixture(scope="module")
def subset(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Symlinks to a seeded sample of each committed UTKFace split."""
    return utkface_subset(tmp_path_factory.mktemp("utkface_subset"), data_dir, SUBSET, seed=7)


@pytest.fixture(scope="module")
def trained(cache: Path, subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TrainConfig(
        unfreeze=10, epochs=1, batch_size=16, out_dir=tmp_path_factory.mktemp("run")
    )
    return train(config, subset, verbose=0)


def test_training_writes_a_model_that_serving_loads(trained: Path, subset: Path) -> None:
    out = trained.parent
    assert trained.name == "model.keras"
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.png",
        "log.csv",
        "model.json",
        "model.keras",
    ]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert {"epoch", "accuracy", "loss", "val_accuracy", "val_loss"} <= set(rows[0])

    classifier = GenderClassifier(trained, batch_size=8, backend="keras")
    crops = load_splits(subset)["test"]
    predictions = classifier.predict(np.asarray(crops.cropset.crops[crops.rows[:5]]))
    assert len(predictions) == 5
    for prediction in predictions:
        assert prediction.gender in ("male", "female")
        assert 0.5 <= prediction.confidence <= 1.0


def test_metadata_describes_the_model_and_its_training(trained: Path) -> None:
    metadata = read_metadata(trained)
    digest = hashlib.sha256(trained.read_bytes()).hexdigest()
    assert metadata.version == f"efficientnet_lite0-{digest[:12]}"
    assert (metadata.backbone, metadata.preprocessing, metadata.input_size) == (
        "efficientnet_lite0",
        "lite",
        224,
    )
    assert metadata.threshold == 0.5
    assert 0.05 <= metadata.temperature <= 20
    assert isinstance(metadata.flip_average, bool)
    assert metadata.flip_below in (*FLIP_GATES, 1.0)
    training = metadata.training
    assert training["images"] == SUBSET
    assert set(training["no_face"]) == set(SUBSET)
    assert training["epochs_run"] == 1 and training["best_epoch"] == 1
    assert training["config"]["unfreeze"] == 10
    assert training["config"]["backbone_weights"] == "imagenet"
    val = metadata.metrics["val"]
    assert val["images"] == SUBSET["val"]
    assert val["faces"] == SUBSET["val"] - training["no_face"]["val"]
    for key in ("accuracy", "accuracy_end_to_end", "ece", "roc_auc"):
        assert 0 <= val[key] <= 1
    gates = {f"flip<{gate}" for gate in FLIP_GATES}
    assert set(metadata.metrics["val_candidates"]) == {"plain", "flip", *gates}


def test_evaluate_reports_end_to_end_scores(trained: Path, subset: Path, tmp_path: Path) -> None:
    result = evaluate(trained, subset, "test", tmp_path)
    assert json.loads((tmp_path / "evaluation.json").read_text()) == result
    assert (tmp_path / "evaluation.png").read_bytes()[:4] == b"\x89PNG"
    assert result["split"] == "test"
    assert result["model_version"] == GenderClassifier(trained, backend="keras").version
    assert result["images"] == SUBSET["test"] == result["faces"] + result["no_face"]
    assert sum(map(sum, result["confusion"]["matrix"])) == SUBSET["test"]
    assert result["confusion"]["predicted"] == ["male", "female", "no_face"]
    for key in ("accuracy", "accuracy_faces", "roc_auc", "ece"):
        assert 0 <= result[key] <= 1
    assert result["loss"] > 0
    assert sum(g["images"] for g in result["by_gender"].values()) == SUBSET["test"]
    assert sum(g["images"] for g in result["by_age_band"].values()) == SUBSET["test"]
    assert set(result["by_age_band"]) <= {"0-12", "13-17", "18-39", "40-59", "60+"}
    assert set(result["by_race"]) <= {"white", "black", "asian", "indian", "others"}
    assert set(result["by_age_group"]) <= {"adult (18+)", "minor (0-17)"}


def test_evaluate_command_prints_the_json_summary(
    trained: Path, subset: Path, tmp_path: Path
) -> None:
    args = [
        "--data",
        str(subset),
        "--model",
        str(trained),
        "--split",
        "val",
        "--out",
        str(tmp_path),
    ]
    outcome = CliRunner().invoke(evaluate_command, args)
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.stdout)
    assert summary["split"] == "val" and summary["images"] == SUBSET["val"]


def test_splits_follow_the_committed_lists(subset: Path) -> None:
    splits = assign_splits(discover(subset))
    assert {name: len(images) for name, images in splits.items()} == SUBSET
    for name, images in splits.items():
        listed = set((SPLIT_LISTS / f"utkface_{name}.txt").read_text().split())
        assert {image.path.name for image in images} <= listed


def test_resnet50_without_weights_trains_one_step(cache: Path, subset: Path) -> None:
    config = TrainConfig(backbone="resnet50", backbone_weights="none", unfreeze=5)
    model = build_model(config)
    assert model.get_layer("preprocess").mode == "caffe"
    compile_model(model, config, steps_per_epoch=1)
    train_split = load_splits(subset)["train"]
    batch = CropBatches(
        train_split.cropset.crops,
        train_split.rows[:4],
        train_split.labels[:4],
        batch_size=4,
        augmentation=Augmentation(),
    )[0]
    frozen = model.get_layer("resnet50").get_layer("conv1_conv").get_weights()[0].copy()
    head = model.get_layer("p_female").get_weights()[0].copy()
    loss = model.train_on_batch(*batch, return_dict=True)["loss"]
    assert math.isfinite(float(loss))
    assert np.array_equal(
        model.get_layer("resnet50").get_layer("conv1_conv").get_weights()[0], frozen
    )
    assert not np.array_equal(model.get_layer("p_female").get_weights()[0], head)


def _only_male(root: Path, image: Path) -> None:
    (root / "male").mkdir()
    shutil.copy(image, root / "male" / "a.jpg")


def _random_names(root: Path, image: Path) -> None:
    for name in ("holiday.jpg", "IMG_0001.jpg"):
        shutil.copy(image, root / name)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root, image: None, "no labelled images found"),
        (_only_male, "found `male/` but not `female/`"),
        (_random_names, "2 image files had other names"),
    ],
    ids=["empty", "only-male", "random-names"],
)
def test_bad_layouts_are_rejected_before_training(
    make, message: str, utkface_files: list[Path], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make(data, utkface_files[0])
    with pytest.raises(DatasetLayoutError, match=message):
        train(TrainConfig(out_dir=tmp_path / "run"), data)
    assert not (tmp_path / "run").exists()


def test_train_command_shows_layout_errors_as_messages(tmp_path: Path) -> None:
    outcome = CliRunner().invoke(
        train_command, ["--data", str(tmp_path), "--out", str(tmp_path / "run")]
    )
    assert outcome.exit_code == 1
    assert "no labelled images found" in outcome.output
    assert "Traceback" not in outcome.output


def test_resuming_with_another_config_is_refused(cache: Path, subset: Path, tmp_path: Path) -> None:
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "config.json").write_text(json.dumps({"epochs": 99}))
    with pytest.raises(ResumeError, match="different configuration"):
        train(TrainConfig(out_dir=tmp_path), subset)


def test_the_train_command_offers_exactly_the_registered_backbones() -> None:
    """The CLI names them without importing Keras; this keeps the two lists one."""
    from worker.training_commands import BACKBONE_CHOICES

    assert tuple(BACKBONES) == BACKBONE_CHOICES


def test_backbone_registry_rejects_unknown_names_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16", "none")
    with pytest.raises(BackboneError, match="'imagenet', 'none' or an existing file"):
        build_backbone("resnet50", str(tmp_path / "missing.h5"))


def test_augmentation_is_seeded_and_keeps_shape() -> None:
    crop = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    first = Augmentation()(crop, np.random.default_rng(1))
    assert first.shape == crop.shape and first.dtype == np.uint8
    assert np.array_equal(first, Augmentation()(crop, np.random.default_rng(1)))
    assert not np.array_equal(first, crop)
    still = Augmentation(rotation=0, translation=0, zoom=0, shear=0, horizontal_flip=False)
    assert np.array_equal(still(crop, np.random.default_rng(1)), crop)


def test_metrics_match_hand_computed_values() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
    labels = np.array([0, 0, 1, 1, 1])
    # Of 6 female-male pairs, 4 are ordered right and one (0.4, 0.4) is a tie worth half.
    assert roc_auc(scores, labels) == pytest.approx(4.5 / 6)
    fpr, tpr = roc_curve(scores, labels)
    assert fpr[-1] == tpr[-1] == 1 and fpr[0] == tpr[0] == 0
    # One bin: confidence 0.9 everywhere, three of four right.
    p_female, truth = np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 0, 0, 0])
    assert expected_calibration_error(p_female, truth) == pytest.approx(0.15)


def test_fit_temperature_recovers_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, 20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-logits))).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * logits))
    assert fit_temperature(overconfident, labels) == pytest.approx(3, rel=0.05)


class _CutShort(keras.callbacks.Callback):
    """Stops the process the way a pre-empted job stops: mid-run, no clean end."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        raise KeyboardInterrupt


def test_an_interrupted_run_resumes_where_it_stopped(
    cache: Path, subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(unfreeze=2, epochs=2, batch_size=8, limit=16, out_dir=tmp_path)
    callbacks = training._callbacks
    monkeypatch.setattr(training, "_callbacks", lambda *args: [*callbacks(*args), _CutShort()])
    with pytest.raises(KeyboardInterrupt):
        train(config, subset, verbose=0)
    assert (tmp_path / "backup" / "config.json").is_file()
    monkeypatch.setattr(training, "_callbacks", callbacks)
    model_path = train(config, subset, verbose=0)
    with open(tmp_path / "log.csv", newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "1"]
    assert read_metadata(model_path).training["epochs_run"] == 2
    assert not (tmp_path / "backup").exists()
