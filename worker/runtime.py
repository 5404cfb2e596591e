"""How a process spreads its work over the cores it may use; TensorFlow set-up, kept lazy.

Nothing here imports TensorFlow: the serving path (ONNX Runtime for MTCNN,
LiteRT for the classifier) never loads it. `configure_tensorflow` only sets
the environment TensorFlow reads when it starts, so the thread counts apply
if and when the Keras backend or training loads it, and cost nothing otherwise.
"""

import os
import sys
from dataclasses import dataclass

from worker.config import Settings

VERBOSE_ENV = "FACEGENDER_VERBOSE"  # read by classifier.runtime.quiet


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0))


def native_logs(verbose: bool = False) -> None:
    """Whether native libraries (TensorFlow, absl, LiteRT's XNNPACK) may log to stderr.

    Set before they load: TensorFlow reads TF_CPP_MIN_LOG_LEVEL when it starts
    (quiet still shows its errors), the classifier reads FACEGENDER_VERBOSE.
    """
    if verbose:
        os.environ.update({VERBOSE_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "0"})
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure_tensorflow(threads: int = 0) -> None:
    """TensorFlow's thread pools (0: its choice) and GPU memory growth, for when it loads.

    Set through the environment TensorFlow reads at start-up; if it is already
    loaded in this process, its running configuration is set too.
    """
    if threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = str(max(1, min(2, threads)))
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if "tensorflow" in sys.modules and threads:
        tf = sys.modules["tensorflow"]
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        except RuntimeError:  # TensorFlow already running: its pools are fixed now
            pass


def configure_opencv(settings: Settings) -> None:
    """OpenCV's threads per call: FACEGENDER_TF_THREADS, else one.

    The pipeline's own threads already keep the cores busy with other images;
    OpenCV's pool inside each of its many small calls (resize, border, remap,
    warp) only contended with them: `facegender run` on 2 cores (bench/e2e.py
    against the previous code, 3 alternated runs) ran webfaces' mixed sizes
    1.10x faster on 10% less CPU time, the same crops at one size 1.05x, 12-24 MP
    photos 1.03x, UTKFace chips and crowds the same.
    """
    import cv2

    cv2.setNumThreads(settings.tf_threads or 1)


@dataclass(frozen=True)
class ThreadPlan:
    """How the pipeline spreads over the cores (see plan_threads)."""

    detect_workers: int  # groups of images detected at once, each on a thread of its own
    detector_threads: int  # ONNX Runtime intra-op threads per detector call
    classifier_threads: int  # LiteRT (XNNPACK) threads of the classifier
    detect_group: int = 16  # images per detector call


def plan_threads(settings: Settings, cpus: int | None = None) -> ThreadPlan:
    """Detector workers and their threads, and the classifier's threads, for `cpus` cores.

    MTCNN's small convolutions use several cores badly from one call, so two
    detector workers run at once, each on cpus/2 threads (on 2 cores, 2 workers
    of 1 ONNX Runtime thread detect 1.3-1.4x the images/s of 1 worker of 2
    threads on UTKFace chips, crowds and webfaces; spinning ORT threads gain
    nothing, see detector.mtcnn_onnx), and the classifier
    (XNNPACK scales well) gets every core from its own thread: they take turns
    more than they overlap. With FACEGENDER_TF_THREADS=N (a process sharing the
    machine with others, as `facegender worker --concurrency` sets it)
    everything keeps to N threads and one detector worker, unless
    FACEGENDER_DETECT_WORKERS says otherwise. Detector calls take 16 images
    (FACEGENDER_DETECT_GROUP overrides): more gains nothing on a CPU.
    """
    cpus = cpus or usable_cpus()
    group = settings.detect_group or 16
    if settings.tf_threads:
        threads = settings.tf_threads
        return ThreadPlan(settings.detect_workers or 1, threads, threads, group)
    workers = settings.detect_workers or min(2, cpus)
    return ThreadPlan(workers, max(1, cpus // workers), cpus, group)
