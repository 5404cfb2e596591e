"""The gallery's filter and keyset cursor, parsed from query arguments into SQL conditions."""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TypeVar

from sqlalchemy import ColumnElement, tuple_

from worker.db import Face

UNSURE_CHOICES = ("all", "only", "exclude")
T = TypeVar("T", int, float)


class BadFilter(ValueError):
    """A query argument that is not a valid filter or cursor value (HTTP 400)."""


@dataclass(frozen=True)
class Filters:
    """What the gallery and the exports select; the same names as the `results` options."""

    job: int | None = None
    gender: str | None = None
    unsure: str = "all"
    min_confidence: float | None = None
    max_confidence: float | None = None
    model_version: str | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> "Filters":
        gender = args.get("gender") or None
        if gender not in (None, "male", "female"):
            raise BadFilter(f"gender must be male or female, not {gender!r}")
        unsure = args.get("unsure") or "all"
        if unsure not in UNSURE_CHOICES:
            raise BadFilter(f"unsure must be one of {', '.join(UNSURE_CHOICES)}")
        return cls(
            job=_number(args, "job", int),
            gender=gender,
            unsure=unsure,
            min_confidence=_number(args, "min_confidence", float),
            max_confidence=_number(args, "max_confidence", float),
            model_version=args.get("model_version") or None,
        )

    def args(self) -> dict[str, str]:
        """The non-default values as query arguments, for links that keep the filter."""
        defaults = asdict(Filters())
        return {k: str(v) for k, v in asdict(self).items() if v != defaults[k]}

    def conditions(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.job is not None:
            where.append(Face.job_id == self.job)
        if self.gender is not None:
            where.append(Face.gender == self.gender)
        if self.unsure != "all":
            where.append(Face.unsure.is_(self.unsure == "only"))
        if self.min_confidence is not None:
            where.append(Face.confidence >= self.min_confidence)
        if self.max_confidence is not None:
            where.append(Face.confidence <= self.max_confidence)
        if self.model_version is not None:
            where.append(Face.model_version == self.model_version)
        return where


@dataclass(frozen=True)
class Key:
    """A face's place in review order (confidence, id): the keyset cursor, `0.53:1234` in URLs."""

    confidence: float
    id: int

    @classmethod
    def parse(cls, text: str) -> "Key":
        confidence, _, face_id = text.partition(":")
        try:
            key = cls(float(confidence), int(face_id))
        except ValueError:
            raise BadFilter(f"not a page key: {text!r}") from None
        if not math.isfinite(key.confidence):
            raise BadFilter(f"not a page key: {text!r}")
        return key

    def __str__(self) -> str:
        return f"{self.confidence!r}:{self.id}"

    def after(self) -> ColumnElement[bool]:
        return tuple_(Face.confidence, Face.id) > tuple_(self.confidence, self.id)

    def before(self) -> ColumnElement[bool]:
        return tuple_(Face.confidence, Face.id) < tuple_(self.confidence, self.id)


def _number(args: Mapping[str, str], name: str, kind: type[T]) -> T | None:
    text = args.get(name) or None
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise BadFilter(f"{name} must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise BadFilter(f"{name} must be finite")
    return value
