"""Read PyTorch ``.pth`` state dicts into numpy arrays without importing torch.

PyTorch checkpoints are pickles, and unpickling runs whatever callables the
file names. We therefore use a restricted :class:`pickle.Unpickler` whose
``find_class`` admits only the handful of globals a plain state dict needs
(tensor rebuild helpers, storage types, ``OrderedDict``), each mapped to a
small local stand-in that builds numpy arrays. Anything else raises
:class:`pickle.UnpicklingError`.

Both on-disk layouts are supported:

- the zip format (torch >= 1.6): ``<root>/data.pkl`` plus one raw file per
  storage under ``<root>/data/<key>``;
- the legacy format (torch < 1.6): a stream of pickles (magic number,
  protocol version, system info, the object, the storage keys) followed by
  each storage as an int64 element count and its raw bytes.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from os import PathLike
from typing import IO, Any

import numpy as np

__all__ = ["load_torch_state_dict"]

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


class _StorageType:
    """Stand-in for a ``torch.<Name>Storage`` class: only records its dtype."""

    def __init__(self, name: str, dtype: np.dtype[Any]) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<storage type torch.{self.name}>"


def _storage_dtypes() -> dict[str, np.dtype[Any]]:
    """The storage classes we can map to a numpy dtype (all little-endian)."""
    dtypes: dict[str, np.dtype[Any]] = {
        "DoubleStorage": np.dtype("<f8"),
        "FloatStorage": np.dtype("<f4"),
        "HalfStorage": np.dtype("<f2"),
        "LongStorage": np.dtype("<i8"),
        "IntStorage": np.dtype("<i4"),
        "ShortStorage": np.dtype("<i2"),
        "CharStorage": np.dtype("i1"),
        "ByteStorage": np.dtype("u1"),
        "BoolStorage": np.dtype("?"),
        "UntypedStorage": np.dtype("u1"),
    }
    try:  # bfloat16 has no numpy dtype; ml_dtypes ships with TensorFlow and JAX.
        import ml_dtypes

        dtypes["BFloat16Storage"] = np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        pass
    return dtypes


_STORAGE_TYPES: dict[str, _StorageType] = {
    name: _StorageType(name, dtype) for name, dtype in _storage_dtypes().items()
}


class _Storage:
    """A flat storage: its dtype, and its data once the file section is read."""

    def __init__(self, dtype: np.dtype[Any], numel: int) -> None:
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _LazyTensor:
    """A tensor whose storage bytes come later in a legacy file.

    Legacy files pickle the tensors before writing any storage data, so the
    numpy array is built only once every storage has been read.
    """

    def __init__(
        self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise pickle.UnpicklingError("tensor refers to a storage that was never read")
        if not self.size:
            return data[self.offset : self.offset + 1].reshape(()).copy()
        # Check the view fits inside the storage before striding over it.
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if min(self.size) > 0 and (self.offset < 0 or last >= data.size or min(self.stride) < 0):
            raise pickle.UnpicklingError("tensor view lies outside its storage")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)  # a contiguous copy, independent of the storage


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _LazyTensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``; grad flags are dropped."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor storage is not a storage")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(
    storage: _Storage, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> _LazyTensor:
    """Stand-in for ``torch._utils._rebuild_tensor`` (older checkpoints)."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is just its tensor."""
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a tensor state dict needs."""

    def __init__(self, file: IO[bytes], persistent_load: Callable[[Any], Any]) -> None:
        super().__init__(file)
        self._persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from a checkpoint"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent_load(pid)


def _storage_record(pid: Any) -> tuple[_StorageType, str, int]:
    """Validates a ``('storage', type, key, location, numel, ...)`` persistent id."""
    if not isinstance(pid, tuple) or len(pid) < 5:
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if typename != "storage" or not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    if not isinstance(numel, int) or numel < 0:
        raise pickle.UnpicklingError(f"bad storage size in {pid!r}")
    return storage_type, str(key), numel


def _materialize(obj: Any) -> Any:
    """Replaces every lazy tensor in a (nested) container by its numpy array."""
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialize(v)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(archive: zipfile.ZipFile) -> Any:
    """Loads the zip format: ``data.pkl`` and ``data/<key>`` under one root folder."""
    pkl_names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl_names) != 1:
        raise pickle.UnpicklingError("zip checkpoint must hold exactly one data.pkl")
    root = pkl_names[0][: -len("data.pkl")]
    byteorder_name = root + "byteorder"
    if byteorder_name in archive.namelist() and archive.read(byteorder_name).strip() != b"little":
        raise pickle.UnpicklingError("big-endian checkpoints are not supported")

    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage_type, key, numel = _storage_record(pid)
        if key not in storages:
            raw = archive.read(f"{root}data/{key}")
            dtype = storage_type.dtype
            storage = _Storage(dtype, numel)
            if storage_type.name == "UntypedStorage":  # numel counts bytes there
                storage.data = np.frombuffer(raw, dtype=np.uint8, count=numel)
            else:
                if len(raw) < numel * dtype.itemsize:
                    raise pickle.UnpicklingError(f"storage {key} is truncated")
                storage.data = np.frombuffer(raw, dtype=dtype, count=numel)
            storages[key] = storage
        return storages[key]

    with archive.open(pkl_names[0]) as f:
        obj = _RestrictedUnpickler(io.BytesIO(f.read()), persistent_load).load()
    return _materialize(obj)


def _load_legacy(f: IO[bytes]) -> Any:
    """Loads the pre-1.6 format: header pickles, the object, then raw storages."""

    def header_load() -> Any:
        return _RestrictedUnpickler(f, _no_persistent_ids).load()

    if header_load() != _LEGACY_MAGIC_NUMBER:
        raise pickle.UnpicklingError("not a PyTorch checkpoint (bad magic number)")
    if header_load() != _LEGACY_PROTOCOL_VERSION:
        raise pickle.UnpicklingError("unsupported legacy PyTorch protocol version")
    sys_info = header_load()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise pickle.UnpicklingError("big-endian checkpoints are not supported")

    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage_type, key, numel = _storage_record(pid)
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("legacy storage views are not supported")
        if key not in storages:
            storages[key] = _Storage(storage_type.dtype, numel)
        return storages[key]

    obj = _RestrictedUnpickler(f, persistent_load).load()
    keys = header_load()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError("legacy checkpoint lacks its storage key list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise pickle.UnpicklingError(f"storage {key!r} was never referenced")
        (count,) = struct.unpack("<q", f.read(8))
        nbytes = count * storage.dtype.itemsize
        raw = f.read(nbytes)
        if count != storage.numel or len(raw) != nbytes:
            raise pickle.UnpicklingError(f"storage {key!r} is truncated or mis-sized")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _materialize(obj)


def _no_persistent_ids(pid: Any) -> Any:
    raise pickle.UnpicklingError("unexpected persistent id in checkpoint header")


def load_torch_state_dict(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """Returns the ``name -> array`` state dict saved by ``torch.save`` at ``path``.

    Works for both the zip and the legacy format. Only plain state dicts are
    accepted (optionally wrapped as ``{"state_dict": ...}``); a pickled
    ``nn.Module`` or any other global is refused with
    :class:`pickle.UnpicklingError`.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            obj = _load_zip(archive)
    else:
        with open(path, "rb") as f:
            obj = _load_legacy(f)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    state: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise pickle.UnpicklingError(f"state dict entry {name!r} is not a tensor")
        state[str(name)] = value
    return state
