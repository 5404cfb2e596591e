"""Process-wide TensorFlow set-up, done once before any model is built."""

import os
from dataclasses import dataclass

from worker.config import Settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure_tensorflow(threads: int = 0) -> None:
    """Thread counts (0 = TensorFlow's choice) and GPU memory growth when a GPU is present."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


@dataclass(frozen=True)
class ThreadPlan:
    """How the pipeline spreads over the cores (see plan_threads)."""

    detect_workers: int
    classifier_threads: int
    detect_group: int = 16  # images per detector call


def plan_threads(settings: Settings) -> ThreadPlan:
    """Detector workers and classifier threads; sets TensorFlow's thread pools to match.

    MTCNN's small convolutions use two cores badly from one call (2 threads
    gave 1.3x one thread here), so with TensorFlow's threads left to us
    (FACEGENDER_TF_THREADS unset) two detector workers run at once, each op on
    cpus/2 threads, and the classifier (XNNPACK scales well) gets every core
    from its own thread (a Keras classifier on a CPU shares TensorFlow's pools,
    so then one detector worker). With FACEGENDER_TF_THREADS=N (a process sharing the
    machine, as `facegender worker --concurrency` sets it) everything keeps to
    N threads and one detector worker, unless FACEGENDER_DETECT_WORKERS says.
    Measured with bench/e2e.py; see bench/results/. Detector calls take 16
    images on a CPU (more gains nothing there) and 64 on a GPU, which wants
    bigger batches (FACEGENDER_DETECT_GROUP overrides).
    """
    import tensorflow as tf

    cpus = len(os.sched_getaffinity(0))
    gpu = bool(tf.config.list_physical_devices("GPU"))
    group = settings.detect_group or (64 if gpu else 16)
    if settings.tf_threads:
        return ThreadPlan(settings.detect_workers or 1, settings.tf_threads, group)
    # A Keras classifier on the CPU runs on TensorFlow's pools too: leave them whole.
    keras_on_cpu = settings.backend.startswith("keras") and not gpu
    workers = settings.detect_workers or (1 if keras_on_cpu else min(2, cpus))
    _set_tensorflow_threads(max(1, cpus // workers), max(2, workers))
    return ThreadPlan(workers, cpus, group)


def _set_tensorflow_threads(intra: int, inter: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TensorFlow already running in this process: keep its pools
        pass
