"""MLflow tracking behind a small seam, in two roles, plus what a run records about its host.

* :mod:`.owner` — :class:`RunOwner`: creates a run (or takes one over) and ends it FINISHED/KILLED/FAILED, never
  leaving it RUNNING; :class:`RunSpec` says which run;
* :mod:`.logger` — :class:`RunLogger`: attaches to a run by id, logs each (metric, step) once, never ends it;
* :mod:`.runlog` — :class:`RunLog`, what training code logs through, and :class:`NullLogger` for processes that
  do not log;
* :mod:`.starter` — a helper process that creates a new run while the training imports torch;
* :mod:`.children` — a parent's child runs (a search's trials), closed out by the parent's process;
* :mod:`.records`, :mod:`.datasets`, :mod:`.sysinfo`, :mod:`.models` — the run's source tags, data input,
  ``gpu-info.txt`` and model; :mod:`.store` — every process's ``MlflowClient``; :mod:`.experiments`,
  :mod:`.webui` — the experiments mltrain creates and ``mltrain ui``.

Importing this package does not import MLflow.
"""

from mltrain.tracking.logger import RunLogger
from mltrain.tracking.owner import BEST_MODEL_TAG, ERROR_TAG, RunOwner, RunSpec
from mltrain.tracking.runlog import NullLogger, RunLog
from mltrain.tracking.store import open_client
from mltrain.tracking.sysinfo import git_state, gpu_info_text

__all__ = [
    "BEST_MODEL_TAG",
    "ERROR_TAG",
    "NullLogger",
    "RunLog",
    "RunLogger",
    "RunOwner",
    "RunSpec",
    "git_state",
    "gpu_info_text",
    "open_client",
]
