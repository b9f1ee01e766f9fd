"""When the data-wait advice is given: decided from an epoch's measured wait, never from the machine's pace.

(The integration test tests/integration/test_newcomer.py::test_data_wait_advice_once_for_a_starved_run starves a
real training; whether a real run on a loaded machine keeps up is not asserted anywhere.)
"""

from __future__ import annotations

import pytest
import torch

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.engines.common import DATA_WAIT_MIN_SECONDS, DATA_WAIT_THRESHOLD, DataWaitAdvice
from mltrain.tracking import NullLogger


class Tags(NullLogger):
    """A run's logger that keeps its tags (all the advice touches)."""

    def __init__(self, run_id: str | None = "r1", tags: dict[str, str] | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.tags = dict(tags or {})

    def tag_value(self, key: str) -> str | None:
        return self.tags.get(key)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)


def _epoch(fraction: float, seconds: float) -> dict[str, float]:
    return {metrics.DATA_WAIT_FRACTION: fraction, metrics.EPOCH_TIME: seconds}


def _advice(tracker: Tags) -> DataWaitAdvice:
    return DataWaitAdvice(TrainConfig(pretrained=False, num_workers=0), tracker, torch.device("cpu"))


def test_a_starved_epoch_gets_the_advice_once_after_the_first(capsys: pytest.CaptureFixture[str]) -> None:
    tracker = Tags()
    advice = _advice(tracker)
    starved = _epoch(0.9, 10.0)
    assert advice.check(0, starved) is None  # the first epoch also starts the loaders: not judged
    given = advice.check(1, starved)
    assert given is not None and "of epoch 2 " in given and "num_workers=0" in given
    assert tracker.tags[metrics.DATA_WAIT_ADVICE_TAG] == given and capsys.readouterr().out.strip() == given
    assert advice.check(2, starved) is None  # once per run


@pytest.mark.parametrize(
    "epoch",
    [
        _epoch(DATA_WAIT_THRESHOLD, 100.0),  # at the threshold: keeps up
        _epoch(0.05, 100.0),
        _epoch(0.9, 0.9 * DATA_WAIT_MIN_SECONDS),  # starved, but under a second of waiting: start-up noise
    ],
    ids=["at-threshold", "keeps-up", "too-short"],
)
def test_a_run_that_keeps_up_gets_none(epoch: dict[str, float], capsys: pytest.CaptureFixture[str]) -> None:
    tracker = Tags()
    advice = _advice(tracker)
    assert [advice.check(n, epoch) for n in range(4)] == [None] * 4
    assert metrics.DATA_WAIT_ADVICE_TAG not in tracker.tags and "advice:" not in capsys.readouterr().out


def test_no_advice_twice_across_a_resume_nor_without_a_run() -> None:
    resumed = Tags(tags={metrics.DATA_WAIT_ADVICE_TAG: "advice: given before"})
    advice = _advice(resumed)
    assert [advice.check(n, _epoch(0.9, 10.0)) for n in range(3)] == [None] * 3
    assert resumed.tags[metrics.DATA_WAIT_ADVICE_TAG] == "advice: given before"
    assert [_advice(Tags(run_id=None)).check(n, _epoch(0.9, 10.0)) for n in range(3)] == [None] * 3
