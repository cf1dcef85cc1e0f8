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


# -- shared option helpers (options.py) ------------------------------------------------------------
def test_float_lists_refuse_non_finite_and_name_one_sided_bounds():
    from yoco_cli.options import UserError, parse_float_list

    assert parse_float_list("0, 0.5,1", "depth", 0.0, 1.0) == [0.0, 0.5, 1.0]
    for text, message in (("nan", "bad x 'nan': must be a finite number"), ("1,-inf", "bad x '-inf': must be a finite"),
                          ("-1", "bad x -1: must be at least 0"), ("x", "bad x 'x': not a number")):
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            parse_float_list(text, "x", lo=0.0)
    with pytest.raises(UserError, match="bad x 3: must be at most 2"):
        parse_float_list("3", "x", hi=2.0)


def test_ensure_out_dir_creates_probes_and_refuses(tmp_path):
    from yoco_cli.options import UserError, ensure_out_dir

    made = ensure_out_dir(tmp_path / "a" / "b")
    assert made.is_dir() and list(made.iterdir()) == []          # the probe file is gone
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"^--out .*f: exists and is not a folder$"):
        ensure_out_dir(tmp_path / "f")
    with pytest.raises(UserError, match=r"^--dir .*f/sub: cannot write there \(Not a directory\)$"):
        ensure_out_dir(tmp_path / "f" / "sub", "--dir")


def test_ensure_fits_compares_the_estimate_with_the_available_memory():
    import torch

    from yoco_cli.options import UserError, ensure_fits
    from yoco_core.config import get_config
    from yoco_core.perf.analytic import estimate_memory
    from yoco_core.perf.hardware import available_memory

    cfg = get_config("yoco-tiny")
    ensure_fits(cfg, 1024, 1, "cpu", torch.float32)                    # a few MB: fits
    ensure_fits(None, 1 << 20, 1 << 20, "cpu", torch.float32)          # no config (hf:, unilm:): not checked
    have = available_memory("cpu")
    batch = 2
    while estimate_memory(cfg, 1 << 20, batch, 4, 32768)["total"] <= have:
        batch *= 2
    with pytest.raises(UserError, match=r"^yoco-tiny needs about [\d.]+ GB \(fp32 weights, and the cache and "
                                        r"activations of 1m tokens x batch \d+\); "
                                        r"cpu: this machine has [\d.]+ GB available"):
        ensure_fits(cfg, 1 << 20, batch, "cpu", torch.float32, chunk=32768)


def test_available_memory_is_what_ulimit_v_and_the_ram_leave():
    """Under ``ulimit -v`` (RLIMIT_AS) the CPU's available memory is the address space left, not
    the machine's RAM; without it, at most the physical RAM."""
    import os
    import resource
    import subprocess
    import sys

    from yoco_core.perf.hardware import available_memory, device_memory

    assert 0 < available_memory("cpu") <= device_memory("cpu")
    limit = 3 << 30

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    code = "from yoco_core.perf.hardware import available_memory; print(available_memory('cpu'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=cap, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert 0 < int(r.stdout) < limit - (200 << 20)                # less what torch's import maps
