"""Ctrl+C and SIGTERM, the same way in every process that owns a run: the run ends KILLED, never RUNNING.

* :func:`sigterm_as_exception` turns SIGTERM into :class:`~mltrain.errors.TrainingInterrupted` in the main thread,
  as Python does with Ctrl+C and KeyboardInterrupt;
* :func:`call_interruptibly` runs a blocking call (Ray's ``fit``) in a thread, so the main thread hears both;
* :class:`ResumeHint` travels on the interrupt (``exc.resume_hint``): which run stopped and how to continue it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltrain.errors import TrainingInterrupted


@dataclass
class ResumeHint:
    """Attached to an interrupt that stopped a training (``exc.resume_hint``): how to continue it."""

    run_id: str
    folder: Path

    def __str__(self) -> str:
        return (
            f"run {self.run_id} ended KILLED; its checkpoint is in {self.folder}\n"
            f"continue it with: mltrain train --resume {self.folder}"
        )


@contextlib.contextmanager
def resume_hint_on_interrupt(run_id: Callable[[], str | None], folder: Callable[[], Path]) -> Iterator[None]:
    """Give an interrupt of the block the run id and the folder to resume from (the CLI prints them).

    Args:
        run_id: The run's id, read when the interrupt comes (None: no run exists yet, no hint).
        folder: The training's checkpoint folder, read then too.
    """
    try:
        yield
    except (KeyboardInterrupt, TrainingInterrupted) as exc:
        current = run_id()
        if current is not None:
            exc.resume_hint = ResumeHint(current, folder())  # type: ignore[union-attr]
        raise


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Turn SIGTERM into TrainingInterrupted in the main thread, so the run ends KILLED, not RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise TrainingInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def call_interruptibly(function: Callable[[], Any], name: str, on_interrupt: Callable[[threading.Thread], None]) -> Any:
    """``function()`` in a thread, so that Ctrl+C and SIGTERM reach this (main) thread at once.

    Ray's ``fit`` calls block in places a signal cannot interrupt. On an interrupt, ``on_interrupt(thread)``
    stops the work (and may wait for the thread), then the interrupt is raised again. Otherwise the
    function's result is returned, or its exception raised, here.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = function()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(timeout=0.5)
    except BaseException:
        on_interrupt(thread)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
