"""The metric vocabulary every engine logs (the lab's names, so its MLflow queries keep working)."""

from __future__ import annotations

EPOCH_TIME = "epoch_time"
TRAIN_LOSS = "train_loss"
TRAIN_ACCURACY = "train_accuracy"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
TRAINABLE_PARAMS = "trainable_params"
DATA_WAIT_FRACTION = "data_wait_fraction"
"""Share of the epoch spent waiting for the next batch: near 0 means the data path keeps up."""
WORKERS = "workers"
"""Data-parallel processes that trained the epoch (1 locally; changes when an elastic Ray group resizes)."""
TRACKING_BLOCKED = "tracking_blocked_seconds"
"""Seconds the training loop spent in MLflow calls since the previous epoch (logging is queued: near 0)."""
STARTUP = "startup_seconds"
"""Seconds from the command's start (from Python: the ``train()`` call) to the first training batch, logged by
the local engines at the first epoch they train (the step of a resume's first epoch, on resume)."""
TEST_LOSS = "test_loss"
TEST_ACCURACY = "test_accuracy"
TEST_CLASS_ACCURACY_PREFIX = "test_class_accuracy/"
"""Per class, after the test evaluation: the share of the class's test images predicted right (its recall), as
``test_class_accuracy/<class>`` (see :func:`class_accuracy_key`)."""
SKIPPED_IMAGES = "skipped_images"
"""Files in the data folder that were not readable images (logged once, at step 0)."""

EPOCH_METRICS: tuple[str, ...] = (
    EPOCH_TIME,
    TRAIN_LOSS,
    TRAIN_ACCURACY,
    VAL_LOSS,
    VAL_ACCURACY,
    TRAINABLE_PARAMS,
    DATA_WAIT_FRACTION,
    WORKERS,
)
"""Logged once per epoch with ``step=epoch`` (0-based)."""
FINAL_METRICS: tuple[str, ...] = (TEST_LOSS, TEST_ACCURACY)
"""Logged once, after training, for the best weights."""
MODEL_NAME = "food11"
"""Name under which each run logs its model (and the default registered model name)."""
EXPERIMENT = "food11-classifier"
"""Default MLflow experiment."""
GPU_INFO_ARTIFACT = "gpu-info.txt"
CONFIG_ARTIFACT = "config.yaml"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
CONFUSION_MATRIX_JSON = "confusion_matrix.json"
PER_CLASS_TABLE = "per_class.json"
"""Per class: test images, correct predictions, precision, recall (= the class's accuracy), F1 (an MLflow table)."""
DATA_WAIT_ADVICE_TAG = "mltrain.advice.data_wait"
"""Run tag, set once per run: the advice printed when an epoch spent too much of its time waiting for data."""


def class_accuracy_key(class_name: str) -> str:
    """``test_class_accuracy/Noodles_Pasta`` for "Noodles/Pasta": a metric name with one ``/``, grouped in the UI."""
    return TEST_CLASS_ACCURACY_PREFIX + "".join(c if c.isalnum() else "_" for c in class_name)
