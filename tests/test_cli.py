"""The `yoco` command itself: usage errors are one message and exit 2, never a traceback."""
import pytest

from yoco_cli.main import main


@pytest.mark.parametrize("argv", [
    ["report"],                                  # a missing argument
    ["eval"],                                    # a missing required option
    ["needle", "--bogus"],                       # an unknown option
    ["train", "--steps", "abc"],                 # a value of the wrong type
    ["eval", "--tasks", "x", "--limit", "0"],    # a value out of range
    ["profile", "--out"],                        # an option without its value
    ["no-such-command"],
])
def test_usage_errors_exit_2_without_traceback(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Error" in err


def test_bare_command_prints_help_and_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("needle", "eval", "profile", "report", "train"):
        assert name in out


def test_markup_in_user_input_is_printed_as_is(capsys):
    assert main(["profile", "--ctx", "[/]"]) == 2
    assert "bad size '[/]'" in capsys.readouterr().err
