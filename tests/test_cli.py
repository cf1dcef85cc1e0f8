"""The `yoco` command itself: usage errors are one message and exit 2, never a traceback."""
import pytest

from yoco_cli.main import main


@pytest.mark.parametrize("argv,message", [
    (["report"], "Error: Missing argument 'dirs'"),                                      # a missing argument
    (["eval"], "Error: Missing option '--tasks'"),                                       # a missing required option
    (["needle", "--bogus"], "Error: No such option: --bogus"),                           # an unknown option
    (["train", "--steps", "abc"], "Error: Invalid value for '--steps'"),                 # a value of the wrong type
    (["eval", "--tasks", "x", "--limit", "0"], "Error: Invalid value for '--limit'"),    # a value out of range
    (["profile", "--out"], "Error: Option '--out' requires an argument"),                # an option without its value
    (["no-such-command"], "Error: No such command 'no-such-command'"),
])
def test_usage_errors_exit_2_without_traceback(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err


def test_bare_command_prints_help_and_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("needle", "eval", "profile", "report", "train"):
        assert name in out


def test_markup_in_user_input_is_printed_as_is(capsys):
    assert main(["profile", "--ctx", "[/]"]) == 2
    assert "bad size '[/]'" in capsys.readouterr().err


def test_a_bad_kernel_variable_is_one_line_and_exit_2(tmp_path):
    """``YOCO_KERNEL_*`` is read once, when the kernels are first imported (inside the command):
    a bad value is still one line naming the variable, exit 2, no traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "YOCO_KERNEL_FUSED": "cuda"}
    r = subprocess.run([sys.executable, "-m", "yoco_cli.main", "needle", "--ctx", "1k", "--depths", "0.5",
                        "--device", "cpu", "--out", str(tmp_path / "n")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: YOCO_KERNEL_FUSED='cuda': use auto, torch or triton", r.stderr
