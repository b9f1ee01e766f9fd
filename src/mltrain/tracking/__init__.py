"""MLflow tracking behind a small seam (start/attach, log, end), plus what a run records about its host."""

from mltrain.tracking.session import BEST_MODEL_TAG, ERROR_TAG, RunTracker
from mltrain.tracking.store import open_client
from mltrain.tracking.sysinfo import git_state, gpu_info_text

__all__ = ["BEST_MODEL_TAG", "ERROR_TAG", "RunTracker", "git_state", "gpu_info_text", "open_client"]
