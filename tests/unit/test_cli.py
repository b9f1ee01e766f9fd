"""The command line's contract: usage errors exit 2 with one message, never a traceback."""

import pytest

from mltrain.cli import SUBCOMMANDS, app, main


@pytest.mark.parametrize(
    "argv",
    [["train", "--bogus"], ["bench", "--epochs", "two"], ["no-such-command"], ["train", "--set", "lr=-1"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()


def test_every_subcommand_has_an_example_in_its_help() -> None:
    for _group, name, function in SUBCOMMANDS:
        assert "Example" in (function.__doc__ or ""), name
    assert app.info.name == "mltrain"
