"""Process-wide TensorFlow set-up, done once before any model is built."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure_tensorflow(threads: int = 0) -> None:
    """Thread counts (0 = TensorFlow's choice) and GPU memory growth when a GPU is present."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
