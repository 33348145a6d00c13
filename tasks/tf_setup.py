"""TensorFlow runs the input pipeline on the host CPU only: hide accelerators from it before first use.

Imported by every ``tasks`` module that uses TensorFlow. Without this, a GPU build of TensorFlow would reserve
GPU memory that JAX needs (big_vision and MaxText do the same).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised its devices (imported and used elsewhere first)
    pass
