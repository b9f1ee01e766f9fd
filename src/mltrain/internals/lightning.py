"""What mltrain takes from Lightning beyond its documented API. ``tests/unit/test_internals.py`` checks each use
against the installed Lightning. Lightning is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any

BATCH_FETCH_SUFFIX = "_next"
"""Lightning's loops profile each batch fetch as an action named ``[<loop>].<dataloader>_next``
(``train_dataloader_next``, ``val_next`` ...). A profiler sees only action names, and the names are not an API:
:func:`is_batch_fetch` is how mltrain's data-wait timer recognises a fetch."""


def is_batch_fetch(action_name: str) -> bool:
    """Whether a profiler action is a loop waiting for its next batch."""
    return action_name.endswith(BATCH_FETCH_SUFFIX)


def epochs_processed(trainer: Any) -> int:
    """The epoch a (possibly restored) trainer is about to run, as Lightning passes it to ``set_epoch``.

    Lightning creates the first epoch's dataloader iterator before its own ``set_epoch`` call and, after a
    restore, uses that iterator: a sampler must already be at this epoch when the loader is built. The public
    ``trainer.current_epoch`` counts *completed* epochs, which lags by one after a restore from a checkpoint
    written at an epoch's end; the fit loop's progress counter ``processed`` is the number Lightning uses.
    """
    return int(trainer.fit_loop.epoch_progress.current.processed)


MODEL_CHECKPOINT_PATH_KEYS = ("best_model_path", "last_model_path", "kth_best_model_path")
"""The paths in ``ModelCheckpoint.state_dict()`` (its format, not an API)."""


def relocated_checkpoint_state(state: dict[str, Any], dirpath: str | Path) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state saved in another folder, rewritten as if saved in ``dirpath`` (same file names).

    ``ModelCheckpoint.load_state_dict`` keeps only the best path of a state whose ``dirpath`` is not its own, and
    drops the best score with it; but a checkpoint folder moves (copied to another machine, handed back by Ray
    Train) and its files move with it. Lightning has no option for a moved folder, so the paths in the state
    are rewritten to the same file names in ``dirpath``.
    """
    here = Path(dirpath)
    moved = dict(state)
    if moved.get("dirpath") in (None, str(here)):
        return moved
    for key in MODEL_CHECKPOINT_PATH_KEYS:
        if moved.get(key):
            moved[key] = str(here / Path(moved[key]).name)
    moved["best_k_models"] = {str(here / Path(path).name): value for path, value in moved["best_k_models"].items()}
    moved["dirpath"] = str(here)
    return moved


def stop_local_ranks(trainer: Any) -> None:
    """Stop the DDP ranks Lightning's launcher started (ranks 1..N-1) and reap them, so that rank 0 may finish.

    Lightning's subprocess launcher (``_SubprocessScriptLauncher``, a private class) watches its child processes
    from a thread and SIGKILLs rank 0 within about 5 s of a child ending with an error — which is how every
    child ends once rank 0 stops. Rank 0 still has to end the MLflow run (KILLED or FAILED) and log the best
    model; so the children are stopped and reaped here, and the launcher's list of them (``procs``, which the
    watcher reads) emptied: nothing is left for the watcher to avenge. Lightning has no public way to detach it.
    """
    launcher = getattr(trainer.strategy, "launcher", None)
    procs = getattr(launcher, "procs", None)
    if launcher is None or not procs:
        return
    launcher.kill(signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.wait(timeout=30)
    procs.clear()
