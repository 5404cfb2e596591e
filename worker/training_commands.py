"""`facegender train` and `facegender evaluate`: thin click wrappers over
classifier.training.train and classifier.training.evaluation.

Heavy imports (Keras, the backbones) happen inside the commands so that the
rest of the CLI starts fast, and so nothing here imports TensorFlow unless
Keras itself runs on it.
"""

import json
import logging
import time
from pathlib import Path

import click

# The names of classifier.training.backbones.BACKBONES, without importing Keras (tested).
BACKBONE_CHOICES = ("efficientnet_lite0", "resnet50", "dlib_resnet", "dlib_resnet_stages")


class _Unfreeze(click.ParamType):
    """A layer count, "all", or "none" (0: train the head only)."""

    name = "N|all|none"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | None:
        if value is None or (isinstance(value, str) and value.lower() == "all"):
            return None
        if isinstance(value, str) and value.lower() == "none":
            return 0
        try:
            count = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a layer count nor 'all'", param, ctx)
        if count < 0:
            self.fail("must be 0 or more", param, ctx)
        return count


def _head_units(text: str) -> tuple[int, ...]:
    """Units like "128,64" -> (128, 64); "none" -> () (logistic regression)."""
    if text.strip().lower() == "none":
        return ()
    try:
        units = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected units like 128,64 or 'none'") from None
    if any(unit < 1 for unit in units):
        raise click.BadParameter("every layer needs at least one unit")
    return units


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors a user fixes by changing options or data: shown as messages, not tracebacks."""
    from classifier.runtime import ModelNotFoundError
    from classifier.training.backbones import BackboneError
    from classifier.training.datasets import DatasetLayoutError
    from classifier.training.train import ResumeError

    return BackboneError, DatasetLayoutError, ModelNotFoundError, ResumeError


def _set_up_runtime() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from classifier.runtime.quiet import import_keras

    keras = import_keras()  # before the training modules import it, which TensorFlow logs
    if keras.backend.backend() == "tensorflow":
        from worker.config import Settings
        from worker.runtime import configure_tensorflow

        configure_tensorflow(Settings().tf_threads)


data_option = click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="UTKFace-named images, male/ + female/ folders (optionally under "
    "Training/ and Validation/), or images with a labels.csv (file,gender; evaluation only).",
)
limit_option = click.option(
    "--limit",
    type=click.IntRange(1),
    default=None,
    help="Use a seeded sample of at most N images per split (quick runs).",
)


@click.command()
@data_option
@click.option(
    "--backbone",
    type=click.Choice(BACKBONE_CHOICES),
    default="efficientnet_lite0",
    show_default=True,
)
@click.option(
    "--backbone-weights",
    default="imagenet",
    show_default=True,
    metavar="imagenet|none|PATH",
    help="Starting weights of the backbone.",
)
@click.option(
    "--unfreeze",
    type=_Unfreeze(),
    default="20",
    show_default=True,
    help="Train the last N layers of the backbone ('all' for every layer, 'none' or 0 for "
    "the head only; dlib_resnet(_stages) then trains on cached descriptors (stage features).",
)
@click.option(
    "--head",
    "head_units",
    default="128,64",
    show_default=True,
    metavar="UNITS,...|none",
    help="Hidden Dense layers of the head ('none': logistic regression on the features).",
)
@click.option(
    "--train-batchnorm/--freeze-batchnorm",
    default=False,
    show_default=True,
    help="Let unfrozen BatchNorm layers update their statistics (the seed notebook did).",
)
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option(
    "--learning-rate", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True
)
@click.option(
    "--lr-schedule",
    type=click.Choice(["plateau", "cosine"]),
    default="plateau",
    show_default=True,
    help="ReduceLROnPlateau on val loss, or cosine decay over all epochs.",
)
@click.option(
    "--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True
)
@click.option(
    "--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True
)
@click.option(
    "--patience",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Epochs without a better val loss before training stops.",
)
@click.option("--no-augment", is_flag=True, help="Train without geometric augmentation.")
@click.option("--seed", type=int, default=1234, show_default=True)
@limit_option
@click.option(
    "--workers", type=click.IntRange(1), default=2, show_default=True, help="Augmentation threads."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder [default: runs/BACKBONE-TIMESTAMP]. Rerun with the same --out "
    "and options to resume an interrupted run.",
)
def train(
    data_dir: Path,
    backbone: str,
    backbone_weights: str,
    unfreeze: int | None,
    train_batchnorm: bool,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    lr_schedule: str,
    label_smoothing: float,
    dropout: float,
    head_units: str,
    patience: int,
    no_augment: bool,
    seed: int,
    limit: int | None,
    workers: int,
    out: Path | None,
) -> None:
    """Train a gender model on --data; writes model.keras, model.json, log.csv, curves.png."""
    _set_up_runtime()
    from classifier.runtime.metadata import read_metadata
    from classifier.training.augmentation import Augmentation
    from classifier.training.train import TrainConfig
    from classifier.training.train import train as run_training

    config = TrainConfig(
        backbone=backbone,
        backbone_weights=backbone_weights,
        unfreeze=unfreeze,
        freeze_batchnorm=not train_batchnorm,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        lr_schedule=lr_schedule,
        label_smoothing=label_smoothing,
        dropout=dropout,
        head=_head_units(head_units),
        patience=patience,
        augmentation=Augmentation(rotation=0, translation=0, zoom=0, shear=0, horizontal_flip=False)
        if no_augment
        else Augmentation(),
        seed=seed,
        limit=limit,
        workers=workers,
        out_dir=out or Path("runs") / f"{backbone}-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    click.echo(f"training into {config.out_dir}", err=True)
    try:
        model_path = run_training(config, data_dir)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    metadata = read_metadata(model_path)
    summary = {"model": str(model_path), "version": metadata.version, **metadata.metrics["val"]}
    click.echo(json.dumps(summary, indent=2))


@click.command()
@data_option
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A .keras model with its .json beside it [default: $FACEGENDER_MODEL, else bundled].",
)
@click.option(
    "--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for evaluation.json and evaluation.png [default: the model's folder].",
)
@limit_option
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="Inference runtime to measure: auto (what serving picks, e.g. litert-int8), "
    "keras, or another classifier backend.",
)
def evaluate(
    data_dir: Path,
    model_path: Path | None,
    split: str,
    out: Path | None,
    limit: int | None,
    backend: str,
) -> None:
    """Score a model on one split of --data (no face = wrong) and print the JSON summary.

    A webfaces-style folder (labels.csv) has a val split (even file numbers, for
    selection) and a test split (odd, for the report), scored per gender.
    """
    _set_up_runtime()
    from classifier.training.evaluation import evaluate as run_evaluation

    try:
        result = run_evaluation(model_path, data_dir, split, out, limit, backend)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(result, indent=2))
