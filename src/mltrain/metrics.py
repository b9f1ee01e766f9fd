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
TEST_LOSS = "test_loss"
TEST_ACCURACY = "test_accuracy"
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
