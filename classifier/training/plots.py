"""PNG figures for training curves and evaluation results.

Uses matplotlib's object API (Figure, no pyplot), which renders with Agg and
needs no display or global state.
"""

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def read_log(log_csv: Path) -> list[dict[str, float]]:
    """Rows of a Keras CSVLogger file as floats."""
    with open(log_csv, newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def plot_curves(log_csv: Path, out_png: Path) -> None:
    """Accuracy and loss per epoch, train vs val."""
    rows = read_log(log_csv)
    epochs = [row["epoch"] + 1 for row in rows]
    figure = Figure(figsize=(10, 4), layout="constrained")
    for axes, metric in zip(figure.subplots(1, 2), ("accuracy", "loss"), strict=True):
        for prefix, label in (("", "train"), ("val_", "val")):
            axes.plot(epochs, [row[prefix + metric] for row in rows], marker="o", label=label)
        axes.set(title=metric, xlabel="epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    figure.savefig(out_png, dpi=100)


def plot_evaluation(
    result: dict[str, Any],
    roc: tuple[np.ndarray, np.ndarray],
    bins: tuple[np.ndarray, np.ndarray, np.ndarray],
    out_png: Path,
) -> None:
    """Confusion matrix, ROC curve, reliability diagram and accuracy per group."""
    figure = Figure(figsize=(12, 10), layout="constrained")
    figure.suptitle(f"{result['model_version']} on {result['data']} ({result['split']})")
    (confusion, roc_axes), (calibration, groups) = figure.subplots(2, 2)

    matrix = np.array(result["confusion"]["matrix"])
    confusion.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        confusion.text(column, row, str(count), ha="center", va="center")
    confusion.set(
        title=f"confusion (accuracy {result['accuracy']:.3f})",
        xticks=range(matrix.shape[1]),
        xticklabels=result["confusion"]["predicted"],
        yticks=range(matrix.shape[0]),
        yticklabels=result["confusion"]["true"],
        xlabel="predicted",
        ylabel="true",
    )

    fpr, tpr = roc
    roc_axes.plot(fpr, tpr)
    roc_axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc_axes.set(
        title=f"ROC, female positive (AUC {result['roc_auc'] or math.nan:.4f})",
        xlabel="false positive rate",
        ylabel="true positive rate",
    )

    mean_confidence, bin_accuracy, counts = bins
    filled = counts > 0
    calibration.plot([0.5, 1], [0.5, 1], linestyle=":", color="grey")
    calibration.plot(mean_confidence[filled], bin_accuracy[filled], marker="o")
    calibration.set(
        title=f"reliability (ECE {result['ece']:.4f})",
        xlabel="confidence",
        ylabel="accuracy",
        xlim=(0.5, 1),
    )

    names, values = [], []
    for key in ("by_gender", "by_race", "by_age_band", "by_age_group"):
        for name, group in result[key].items():
            names.append(f"{name} (n={group['images']})")
            values.append(group["accuracy"])
    groups.barh(names, values)
    groups.invert_yaxis()
    groups.set(title="accuracy per group (no face = wrong)", xlim=(0, 1))
    figure.savefig(out_png, dpi=100)


def plot_coverage(result: dict[str, Any], out_png: Path) -> None:
    """Accuracy on answered faces against coverage (all, adults, minors), operating point marked."""
    coverage = result["coverage"]
    point = coverage["operating_point"]
    figure = Figure(figsize=(7, 5), layout="constrained")
    axes = figure.subplots()
    for name in (None, *point["groups"]):
        points = [p if name is None else p["groups"][name] for p in coverage["curve"]]
        points = [p for p in points if p["accuracy"] is not None]
        axes.plot(
            [p["coverage"] for p in points],
            [p["accuracy"] for p in points],
            label=name or "all faces",
        )
    axes.plot(
        point["coverage"],
        point["accuracy"],
        marker="o",
        color="black",
        label=f"operating point: unsure below {point['unsure_below']:.2f}",
    )
    axes.set(
        title=f"{result['model_version']} on {result['data']} ({result['split']})",
        xlabel="coverage (share of faces answered)",
        ylabel="accuracy on answered faces",
    )
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(out_png, dpi=100)
