"""A launcher mistake found by the launcher's own check, which runs inside run_training (barred from the unit tier)."""

import pytest

from tests.unit.test_cli import _exits_2_before_any_run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--engine", "ray", "--accelerator", "gpu"], "needs GPUs per worker")],
)
def test_launcher_mistakes_exit_2_before_any_run(
    argv: list[str], message: str, tiny_data: object, capsys: pytest.CaptureFixture[str]
) -> None:
    _exits_2_before_any_run(argv, message, tiny_data, capsys)
