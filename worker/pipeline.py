"""Process batches of image rows: decode -> detect -> align -> classify -> store.

The embedded `run` and the Celery task both call `process_images`; it is
safe to call again for the same ids (redelivery): images already done are
skipped, and each image's faces and final status are written in one
transaction, so a crash at any point leaves an image either untouched
(pending) or complete.

The stages run at once, each on threads of its own, joined by bounded
channels, so that memory stays a few items deep whatever the folder size:

- decode: a pool decodes images in order, large JPEGs at a reduced size
  (see `DECODE_SIDE`); the decoded pixels alive at once are bounded by a
  pixel budget (`DECODED_PIXELS`), not by a count of images;
- detect: consecutive decoded images are grouped (at most `detect_group`
  images or half the budget, never across batches) and detected by
  `detect_workers` threads, at most that many groups at a time;
- align and classify: one thread aligns each face, releases the image's
  pixels as soon as its crops exist, maps the faces back to the file's
  pixels, and classifies the crops in full classifier calls (the rest at
  the end of each batch);
- store: the calling thread claims each batch, stores it in one
  transaction once it is classified, and keeps one batch claimed ahead.
"""

import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from classifier import GenderClassifier, Prediction
from classifier.runtime.unsure import UnsureRule
from detector import DetectorSettings, Face, FaceDetector, align_face
from detector.loading import ImageLoadError, load_image
from worker.batch import BatchReport, WorkItem
from worker.bounded import Aborted, Channel, PixelBudget
from worker.config import Settings
from worker.faults import is_infrastructure, is_out_of_memory
from worker.reuse import ReuseKey
from worker.reuse import reuse as reuse_rows
from worker.runtime import plan_threads
from worker.store import Claimant, claim, store

_DECODE_THREADS = 2
# Large JPEGs are decoded at the largest power-of-two reduction that keeps this longest side:
# twice the detector's 1024, so that alignment still has twice the detection's resolution
# (a face 45 px wide in detection pixels keeps the aligned crop's 56-px eye distance).
DECODE_SIDE = 2048
# Decoded pixels alive at once (3 bytes each): 72 MB, a few large photos or hundreds of chips.
DECODED_PIXELS = 24_000_000


class _Pools:
    """Named thread pools shared by every batch of this process, started on first use.

    Reusing the threads keeps per-thread state (malloc arenas, runtimes'
    thread-locals) from piling up batch after batch.
    """

    def __init__(self) -> None:
        self._reset()
        # A forked child has none of the parent's threads: it starts its own.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, int], ThreadPoolExecutor] = {}

    def __call__(self, name: str, workers: int) -> ThreadPoolExecutor:
        with self._lock:
            key = (name, workers)
            if key not in self._pools:
                self._pools[key] = ThreadPoolExecutor(workers, f"facegender-{name}")
            return self._pools[key]


_pools = _Pools()


@dataclass
class Models:
    """The per-process models, loaded once and reused for every batch.

    `detect_workers` groups of `detect_group` images are detected at once, on
    threads of their own (see worker.runtime.plan_threads): large enough for
    MTCNN to batch well, small enough that the classifier thread gets work
    while the detector workers go on.
    """

    detector: FaceDetector
    classifier: GenderClassifier
    detect_workers: int = 1
    detect_group: int = 16
    # Flags faces of jobs that have no thresholds recorded yet (see worker.jobs.job_unsure_rule).
    unsure: UnsureRule = UnsureRule()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Models":
        plan = plan_threads(settings)
        detector = FaceDetector(
            DetectorSettings(max_side=settings.max_side, min_face_size=settings.min_face_size),
            threads=plan.detector_threads,
        )
        classifier = GenderClassifier(
            settings.model_path,
            batch_size=settings.classify_batch_size,
            backend=settings.backend,
            threads=plan.classifier_threads,
        )
        unsure = classifier.metadata.unsure.overridden(
            settings.unsure_below, settings.min_eye_distance
        )
        return cls(detector, classifier, plan.detect_workers, plan.detect_group, unsure)

    def load(self) -> None:
        self.detector.load()
        self.classifier.load()


def process_images(
    sessions: sessionmaker[Session],
    image_ids: Sequence[int],
    models: Models,
    claimant: Claimant,
    reuse: bool = True,
) -> BatchReport:
    """Process the images among `image_ids` that `claimant` can claim; store their results."""
    (report,) = process_batches(sessions, [image_ids], models, claimant, reuse)
    return report


def process_batches(
    sessions: sessionmaker[Session],
    batches: Iterable[Sequence[int]],
    models: Models,
    claimant: Claimant,
    reuse: bool = True,
) -> Iterator[BatchReport]:
    """`process_images` on each batch in turn, yielding each report once it is stored.

    Each batch is claimed in one transaction and stored in one, as by
    `process_images`; batch k+1 is claimed while batch k is still in the
    stages, so that they never run dry between batches. (A crash then leaves
    both batches pending with one more attempt counted.) With `reuse`, claimed
    images with the content of an image already done under the same model and
    settings get its rows copied instead (worker.reuse).
    """
    key = ReuseKey.of(models) if reuse else None
    with _Stages(models) as stages:
        in_flight: list[_Batch] = []
        for image_ids in batches:
            batch = _Batch(BatchReport())
            clock = time.perf_counter()
            batch.work = claim(sessions, image_ids, claimant, batch.report)
            batch.report.seconds["db"] += time.perf_counter() - clock
            if key is not None:
                clock = time.perf_counter()
                batch.work = reuse_rows(
                    sessions, batch.work, key, claimant, batch.report, models.unsure
                )
                batch.report.seconds["reuse"] += time.perf_counter() - clock
            batch.started = time.perf_counter()
            stages.submit(batch)
            in_flight.append(batch)
            if len(in_flight) > 1:
                yield _store(sessions, stages.next_classified(), models, claimant)
                in_flight.pop(0)
        stages.close()
        for _ in in_flight:
            yield _store(sessions, stages.next_classified(), models, claimant)


@dataclass
class _Batch:
    """One claimed batch on its way through the stages."""

    report: BatchReport
    work: list[WorkItem] = field(default_factory=list)
    owners: list[tuple[int, int]] = field(default_factory=list)  # (work index, face index)
    predictions: list[Prediction] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


@dataclass
class _Entry:
    """One image of a batch in the stages; `held` is its share of the pixel budget."""

    batch: _Batch
    index: int
    held: int = 0

    @property
    def item(self) -> WorkItem:
        return self.batch.work[self.index]

    @property
    def last(self) -> bool:
        return self.index == len(self.batch.work) - 1


def _store(
    sessions: sessionmaker[Session], batch: _Batch, models: Models, claimant: Claimant
) -> BatchReport:
    """Store a classified batch in one transaction."""
    if batch.work:
        clock = time.perf_counter()
        store(
            sessions,
            batch.work,
            batch.owners,
            batch.predictions,
            models.classifier.version,
            claimant,
            batch.report,
            unsure=models.unsure,
        )
        batch.report.seconds["db"] += time.perf_counter() - clock
    return batch.report


class _Stages:
    """The decode, detect and align/classify stages of one `process_batches` call.

    Three loops on threads of their own hand images down bounded channels; a
    failure in any of them aborts every channel and is raised to the caller.
    """

    def __init__(self, models: Models) -> None:
        self._models = models
        workers, group = max(1, models.detect_workers), max(1, models.detect_group)
        self._budget = PixelBudget(DECODED_PIXELS)
        self._batches: Channel[_Batch] = Channel(2)
        self._decoding: Channel[tuple[_Entry, Future]] = Channel((workers + 2) * group)
        self._detecting: Channel[tuple[list[_Entry], Future]] = Channel(workers)
        self._classified: Channel[_Batch] = Channel(2)
        self._channels = (self._batches, self._decoding, self._detecting, self._classified)
        self._loops: list[Future] = []
        self._failure: BaseException | None = None

    def __enter__(self) -> "_Stages":
        loops = _pools("stages", 12)  # idle threads are reused; 12 never blocks a new call
        for loop in (self._decode, self._detect, self._classify):
            self._loops.append(loops.submit(self._guarded, loop))
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self._abort(None)
        self._batches.close()
        for loop in self._loops:
            loop.result()

    def submit(self, batch: _Batch) -> None:
        self._batches.put(batch)

    def close(self) -> None:
        self._batches.close()

    def next_classified(self) -> _Batch:
        """The next batch whose faces are all classified, in submission order."""
        try:
            return next(iter(self._classified))
        except (Aborted, StopIteration):
            raise self._failure or RuntimeError("the stages stopped early") from None

    def _guarded(self, loop) -> None:
        try:
            loop()
        except Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by next_classified
            self._abort(exc)

    def _abort(self, exc: BaseException | None) -> None:
        self._failure = self._failure or exc
        self._budget.abort()
        for channel in self._channels:
            channel.abort()

    def _decode(self) -> None:
        """Decode every image of every batch on the decode pool, in order."""
        pool = _pools("decode", _DECODE_THREADS)
        ticket = 0
        for batch in self._batches:
            for index in range(len(batch.work)):
                entry = _Entry(batch, index)
                self._decoding.put((entry, pool.submit(self._load, entry, ticket)))
                ticket += 1
            if not batch.work:
                self._decoding.put((_Entry(batch, -1), _done()))
        self._decoding.close()

    def _load(self, entry: _Entry, ticket: int) -> float:
        """Decode one image onto its item and take its pixels from the budget; returns seconds."""
        clock = time.perf_counter()
        item = entry.item
        try:
            loaded = load_image(item.path, min_side=DECODE_SIDE)
        except ImageLoadError as exc:
            item.error_code, item.error = exc.reason, exc.message
            pixels = 0
        else:
            item.pixels, item.sha256, item.scale = loaded.pixels, loaded.sha256, loaded.scale
            item.width, item.height = loaded.width, loaded.height
            pixels = loaded.pixels.shape[0] * loaded.pixels.shape[1]
        seconds = time.perf_counter() - clock
        entry.held = self._budget.take(ticket, pixels)
        return seconds

    def _detect(self) -> None:
        """Group decoded images and detect each group on the detector pool, in order."""
        detectors = _pools("detect", max(1, self._models.detect_workers))
        group: list[_Entry] = []
        held = 0
        for entry, decoding in self._decoding:
            seconds = decoding.result()
            if entry.index < 0:  # an empty batch: nothing to detect, but it must pass on
                self._detecting.put(([entry], _done()))
                continue
            entry.batch.report.seconds["decode"] += seconds
            group.append(entry)
            held += entry.held
            full = len(group) >= self._models.detect_group or 2 * held >= self._budget.limit
            if full or entry.last:
                task = detectors.submit(_detect, [e.item for e in group], self._models.detector)
                self._detecting.put((group, task))
                group, held = [], 0
        self._detecting.close()

    def _classify(self) -> None:
        """Align each detected face, release its image, classify the crops; batch by batch."""
        crops: list[np.ndarray] = []
        owners: list[tuple[_Batch, int, int]] = []
        for group, detecting in self._detecting:
            seconds = detecting.result()
            for entry in group:
                entry.batch.report.seconds["detect"] += seconds / len(group)
                if entry.index >= 0:
                    clock = time.perf_counter()
                    for face_index, crop in enumerate(_align(entry.item)):
                        crops.append(crop)
                        owners.append((entry.batch, entry.index, face_index))
                    self._budget.give_back(entry.held)
                    entry.batch.report.seconds["align"] += time.perf_counter() - clock
                if entry.index < 0 or entry.last:
                    self._predict(crops, owners, everything=True)
                    batch = entry.batch
                    batch.report.seconds["pipeline"] += time.perf_counter() - batch.started
                    self._classified.put(batch)
                elif len(crops) >= self._models.classifier.faces_per_call:
                    self._predict(crops, owners, everything=False)
        self._classified.close()

    def _predict(
        self, crops: list[np.ndarray], owners: list[tuple[_Batch, int, int]], everything: bool
    ) -> None:
        """Classify the crops gathered (only whole classifier calls unless `everything`)."""
        per_call = self._models.classifier.faces_per_call
        count = len(crops) if everything else len(crops) - len(crops) % per_call
        if not count:
            return
        clock = time.perf_counter()
        predictions = self._models.classifier.predict(np.stack(crops[:count]))
        for (batch, index, face_index), prediction in zip(owners[:count], predictions, strict=True):
            batch.owners.append((index, face_index))
            batch.predictions.append(prediction)
        owners[0][0].report.seconds["classify"] += time.perf_counter() - clock
        del crops[:count], owners[:count]


def _done() -> Future:
    """A future that is already done (with 0.0 seconds), for entries with nothing to wait for."""
    future: Future = Future()
    future.set_result(0.0)
    return future


def _detect(work: list[WorkItem], detector: FaceDetector) -> float:
    """Detect in one group; if the group fails, retry image by image to isolate the culprit.

    Returns the seconds it took.
    """
    clock = time.perf_counter()
    ready = [(w, w.pixels) for w in work if w.pixels is not None]
    try:
        found = detector.detect_batch([pixels for _, pixels in ready])
        for (item, _), faces in zip(ready, found, strict=True):
            item.faces = faces
    except Exception:
        for item, pixels in ready:
            try:
                item.faces = detector.detect(pixels)
            except Exception as exc:
                if is_out_of_memory(exc) or is_infrastructure(exc):
                    raise  # the machine's fault, not the image's (see worker.faults)
                item.error_code, item.error = "detection_failed", f"face detection failed: {exc}"
    return time.perf_counter() - clock


def _align(item: WorkItem) -> list[np.ndarray]:
    """Crops of the item's faces; then its pixels go and its faces move to the file's pixels."""
    crops = []
    if item.pixels is not None and not item.error_code:
        crops = [align_face(item.pixels, face.landmarks) for face in item.faces]
        if item.scale != 1.0:
            item.faces = [_to_original(f, item.scale, item.width, item.height) for f in item.faces]
    item.pixels = None
    return crops


def _to_original(face: Face, scale: float, width: int | None, height: int | None) -> Face:
    """A face found in pixels decoded at `scale` -> the same face in the file's pixels."""
    x, y, w, h = (value / scale for value in face.box)
    right, bottom = min(x + w, float(width or x + w)), min(y + h, float(height or y + h))
    return Face(
        box=(x, y, right - x, bottom - y),
        landmarks=(face.landmarks / scale).astype(np.float32),
        score=face.score,
    )
