"""Where a model's files are: the `.keras` model, its `.json` metadata and its LiteRT files.

A model is served from `model.keras` + `model.json`, plus, for the fast CPU
runtime, LiteRT flatbuffers made from it by the export command
(`python -m classifier.training.export`), beside it:
- `<stem>.int8.tflite`: full-integer int8 (needs calibration crops at export);
- `<stem>.fp32.tflite`: float32, matching Keras to about 1e-5;
each with a `<stem>.<kind>.json` record naming the sha256 of the `.keras` file it
was made from, so a retrained model is never served with stale weights.
For ONNX Runtime, which builds its graph from the `.keras` file itself
(classifier.runtime.onnx_graph), int8 needs only the activation ranges measured
on calibration crops: `<stem>.onnx-int8.json`, a few KB, with the same record.
"""

import functools
import hashlib
import json
import os
from pathlib import Path

from classifier.runtime.metadata import metadata_path

DEFAULT_MODEL_PATH = Path(__file__).parent.parent / "default_model" / "model.keras"
MODEL_ENV = "FACEGENDER_MODEL"
LITERT_KINDS = ("int8", "fp32")
EXPORT_MODULE = "classifier.training.export"


class ModelNotFoundError(FileNotFoundError):
    """No usable model at the configured path; the message says how to get one."""


class ArtifactMissingError(FileNotFoundError):
    """No LiteRT file made from this exact model; the message says how to make one."""


def resolve_model_path(model_path: str | os.PathLike[str] | None = None) -> Path:
    """Explicit path, else $FACEGENDER_MODEL, else the model bundled with the package."""
    chosen = Path(model_path or os.environ.get(MODEL_ENV) or DEFAULT_MODEL_PATH)
    if not chosen.is_file() or not metadata_path(chosen).is_file():
        raise ModelNotFoundError(
            f"no model at {chosen} (a .keras file and its .json metadata beside it). "
            "Pass --model PATH or set FACEGENDER_MODEL to a model made by "
            "`facegender train`, or reinstall facegender to restore the bundled default model."
        )
    return chosen


def file_sha256(path: Path) -> str:
    """The file's sha256, computed once per (path, size, mtime) in a process."""
    stat = path.stat()
    return _sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def litert_paths(model_path: Path, kind: str) -> tuple[Path, Path]:
    """(`<stem>.<kind>.tflite`, `<stem>.<kind>.json`) beside the model; kind: int8 or fp32."""
    if kind not in LITERT_KINDS:
        raise ValueError(f"LiteRT kind must be one of {LITERT_KINDS}, not {kind!r}")
    return (
        model_path.with_name(f"{model_path.stem}.{kind}.tflite"),
        model_path.with_name(f"{model_path.stem}.{kind}.json"),
    )


def onnx_ranges_path(model_path: Path) -> Path:
    """`<stem>.onnx-int8.json` beside the model: ONNX Runtime's int8 calibration ranges."""
    return model_path.with_name(f"{model_path.stem}.onnx-int8.json")


def onnx_int8_record(model_path: Path) -> dict:
    """The int8 ranges record made from this exact `model_path`, or ArtifactMissingError."""
    path = onnx_ranges_path(model_path)
    if not path.is_file():
        raise ArtifactMissingError(
            f"no ONNX int8 ranges beside {model_path}; make them with "
            f"`{export_command(model_path)}`"
        )
    record = json.loads(path.read_text())
    if record.get("model_sha256") != file_sha256(model_path):
        raise ArtifactMissingError(
            f"{path} was made from another version of {model_path.name}; export it "
            f"again with `{export_command(model_path)}`"
        )
    return record


def export_command(model_path: Path) -> str:
    """The command that makes a model's LiteRT files, for messages."""
    return f"python -m {EXPORT_MODULE} --model {model_path}"


def litert_artifact(model_path: Path, kind: str) -> Path:
    """The `kind` LiteRT file made from this exact `model_path`, or ArtifactMissingError."""
    artifact, record = litert_paths(model_path, kind)
    if not artifact.is_file() or not record.is_file():
        raise ArtifactMissingError(
            f"no {kind} LiteRT file beside {model_path}; make one with "
            f"`{export_command(model_path)}`"
        )
    made_from = json.loads(record.read_text()).get("model_sha256")
    if made_from != file_sha256(model_path):
        raise ArtifactMissingError(
            f"{artifact} was made from another version of {model_path.name}; export it "
            f"again with `{export_command(model_path)}`"
        )
    return artifact
