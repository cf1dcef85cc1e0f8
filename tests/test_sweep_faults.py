"""Faults a sweep survives (issue 19): a last row cut off by a crash or a full disk, a second run
into the same folder, SIGINT / SIGTERM to a real process. Each: the rows already measured stay
complete on disk, --resume continues without hand edits, and `yoco report` reads the file."""
from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_needle import ckpt  # noqa: F401 - the tiny checkpoint fixture

from yoco_cli import schemas
from yoco_cli.main import main
from yoco_core import needle as nd
from yoco_core.generation import Generation

ROOT = Path(__file__).resolve().parents[1]
ANSWER = 'it is "42",\nsurely'            # quoted in the CSV: commas, a quote and a line break


@pytest.fixture
def answered(monkeypatch):
    """generate() stubbed to answer ``ANSWER`` at once; the prompts it was asked, in order."""
    calls = []

    def fake(model, ids, max_new_tokens, **kw):
        calls.append(ids.shape[1])
        return Generation([[]], [ANSWER], ids.shape[1], 0.01, 0.0)

    monkeypatch.setattr(nd, "generate", fake)
    return calls


def _needle(ckpt, out, depths="0,0.25,0.5,0.75,1", *extra) -> list[str]:
    return ["needle", "--model", ckpt, "--device", "cpu", "--ctx", "512", "--depths", depths,
            "--out", str(out), *extra]


def _csv_rows(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _err_lines(capsys) -> list[str]:
    """The error lines on stderr (the announcement and progress bar left out); none a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith(("error:", "warning:"))]


def _report_reads(run: Path, tmp_path: Path) -> None:
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").exists()


# -- a last row cut off ----------------------------------------------------------------------
def test_a_row_that_lost_only_its_newline_is_kept(ckpt, tmp_path, answered, capsys):
    out = tmp_path / "run"
    assert main(_needle(ckpt, out, "0,0.5")) == 0
    path = schemas.NEEDLE.path(out)
    data = path.read_bytes()
    assert data.endswith(b"\r\n")
    path.write_bytes(data[:-2])                      # as a crash leaves it
    capsys.readouterr()
    assert main(_needle(ckpt, out, "0,0.5,1", "--resume")) == 0
    assert answered == [512] * 3                     # only the new cell measured
    assert "warning" not in capsys.readouterr().err
    rows = _csv_rows(path)
    assert len(rows) == 4 and all(len(r) == len(schemas.NEEDLE.names) for r in rows)
    assert [r[rows[0].index("prediction")] for r in rows[1:]] == [ANSWER] * 3
    assert not path.with_name("needle.csv.partial").exists()
    _report_reads(out, tmp_path)


@pytest.mark.parametrize("cut", ["fewer-fields", "inside-a-quote", "in-the-date"])
def test_a_half_row_is_set_aside_and_resume_measures_it_again(ckpt, tmp_path, answered, capsys, cut):
    out = tmp_path / "run"
    assert main(_needle(ckpt, out, "0,0.5,1")) == 0
    path = schemas.NEEDLE.path(out)
    data = path.read_bytes()
    last = data.rindex(b"\r\n", 0, len(data) - 2) + 2          # where the last row starts
    at = {"fewer-fields": data.index(b",", last) + 1,
          "inside-a-quote": data.index(b'"42', last) + 2,
          "in-the-date": len(data) - 6}[cut]
    path.write_bytes(data[:at])
    capsys.readouterr()
    assert main(_needle(ckpt, out, "0,0.5,1", "--resume")) == 0
    warnings = _err_lines(capsys)
    assert len(warnings) == 1 and "cut off" in warnings[0] and "needle.csv.partial" in warnings[0]
    assert answered == [512] * 4                     # the cut cell measured again, the others not
    assert path.with_name("needle.csv.partial").read_bytes() == data[last:at] + b"\n"
    df = schemas.NEEDLE.read(path)
    assert len(df) == 3 and sorted(df["depth"]) == [0.0, 0.5, 1.0] and set(df["prediction"]) == {ANSWER}
    _report_reads(out, tmp_path)


def test_a_cut_header_is_set_aside_and_written_again(tmp_path, capsys):
    path = schemas.EVAL.path(tmp_path)
    path.write_text("task,metric,val")
    schemas.EVAL.append_row(tmp_path, {"task": "t", "metric": "acc", "value": 0.5, "model": "m"})
    assert _csv_rows(path) == [schemas.EVAL.names, ["t", "acc", "0.5", "", "m", "", "", "", "", ""]]
    assert path.with_name("eval.csv.partial").read_text() == "task,metric,val\n"
    assert len(_err_lines(capsys)) == 1


# -- disk full -------------------------------------------------------------------------------
def test_disk_full_mid_row_keeps_whole_rows_and_resume_continues(ckpt, tmp_path, answered, monkeypatch, capsys):
    """The third row's write fails with ENOSPC after half its bytes reached the file: the run stops
    with one line and exit 2, the half row is gone, the lock too; --resume finishes the grid."""
    real, writes = schemas._write_all, []

    def full_on_third_row(f, data):
        if f.name.endswith("needle.csv"):
            writes.append(len(data))
            if len(writes) == 3:
                real(f, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(schemas, "_write_all", full_on_third_row)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(_needle(ckpt, out)) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "disk full" in err[0] and "--resume" in err[0], err
    path = schemas.NEEDLE.path(out)
    assert path.read_bytes().endswith(b"\r\n") and len(schemas.NEEDLE.read(path)) == 2
    assert not (out / schemas.LOCK_NAME).exists()
    assert main(_needle(ckpt, out, "0,0.25,0.5,0.75,1", "--resume")) == 0
    assert answered == [512] * 6 and len(schemas.NEEDLE.read(path)) == 5
    assert not path.with_name("needle.csv.partial").exists()
    _report_reads(out, tmp_path)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (filled up by the test) (root only: skipped where it cannot be mounted)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_really_full_disk_stops_with_one_line_and_resume_continues(ckpt, small_tmpfs, tmp_path, answered,
                                                                     capsys):
    st = os.statvfs(small_tmpfs)
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"x" * (st.f_bavail * st.f_frsize - 3 * st.f_frsize))   # leaves 3 pages
    out = small_tmpfs / "run"
    depths = ",".join(str(i / 99) for i in range(100))         # 100 rows: more than a page holds
    capsys.readouterr()
    assert main(_needle(ckpt, out, depths)) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "disk full" in err[0], err
    path = schemas.NEEDLE.path(out)
    kept = len(schemas.NEEDLE.read(path))
    assert 0 < kept < 100 and path.read_bytes().endswith(b"\r\n")
    filler.unlink()
    assert main(_needle(ckpt, out, depths, "--resume")) == 0
    assert len(answered) == 100 + 1 and len(schemas.NEEDLE.read(path)) == 100
    _report_reads(out, tmp_path)


# -- one writer per folder -------------------------------------------------------------------
@pytest.fixture
def live_pid():
    p = subprocess.Popen(["sleep", "60"])
    yield p.pid
    p.kill()
    p.wait()


def _hold(folder: Path, pid: int, command="yoco needle --out elsewhere") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / schemas.LOCK_NAME
    lock.write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "command": command}))
    return lock


@pytest.mark.parametrize("command", ["needle", "profile"])
def test_a_second_run_into_a_held_folder_fails_at_once(ckpt, tmp_path, answered, live_pid, capsys, command):
    out = tmp_path / "run"
    lock = _hold(out, live_pid)
    argv = _needle(ckpt, out) if command == "needle" else [
        "profile", "--size", "tiny", "--ctx", "64", "--device", "cpu", "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and f"pid {live_pid}" in err[0] and "yoco needle --out elsewhere" in err[0], err
    assert answered == [] and not list(out.glob("*.csv"))
    assert json.loads(lock.read_text())["pid"] == live_pid          # the holder's lock is left alone


def test_a_stale_lock_is_taken_over_and_removed_after(ckpt, tmp_path, answered, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()                                      # a pid that no longer runs
    out = tmp_path / "run"
    lock = _hold(out, dead.pid)
    capsys.readouterr()
    assert main(_needle(ckpt, out, "0,1")) == 0
    warnings = _err_lines(capsys)
    assert len(warnings) == 1 and f"pid {dead.pid}" in warnings[0] and "no longer running" in warnings[0]
    assert answered == [512, 512] and not lock.exists()


def test_the_lock_is_released_on_errors_and_held_while_running(ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(_needle(ckpt, out, "0", "--haystack", str(tmp_path / "missing.txt"))) == 2
    assert not (out / schemas.LOCK_NAME).exists()
    seen = []

    def look(model, ids, max_new_tokens, **kw):
        seen.append(json.loads((out / schemas.LOCK_NAME).read_text()))
        return Generation([[]], [""], ids.shape[1], 0.0, 0.0)

    monkeypatch.setattr(nd, "generate", look)
    assert main(_needle(ckpt, out, "0")) == 0
    assert seen[0]["pid"] == os.getpid() and "yoco needle" in seen[0]["command"]
    assert not (out / schemas.LOCK_NAME).exists()


# -- SIGINT / SIGTERM to a real process --------------------------------------------------------
SLOW_CELLS = textwrap.dedent("""
    import sys, time
    from yoco_core import needle as nd
    from yoco_core.generation import Generation

    def slow(model, ids, max_new_tokens, **kw):      # each cell takes 0.4 s
        time.sleep(0.4)
        return Generation([[]], ["1234567"], ids.shape[1], 0.4, 0.0)

    nd.generate = slow
    from yoco_cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_CELLS, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})


def _wait_for_rows(path: Path, proc: subprocess.Popen, n: int = 1) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(_csv_rows(path)) > n:
            return
        time.sleep(0.05)
    pytest.fail(f"no row in {path} (exit {proc.poll()}): {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_row_in_flight_and_resume_finishes(ckpt, tmp_path, answered, sig, code):
    out = tmp_path / "run"
    depths = ",".join(str(i / 19) for i in range(20))           # 20 cells of 0.4 s
    argv = _needle(ckpt, out, depths)
    proc = _start(argv)
    path = schemas.NEEDLE.path(out)
    _wait_for_rows(path, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    kept = len(schemas.NEEDLE.read(path))
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert lines == [f"interrupted: {kept} rows kept, --resume continues"], err
    assert 1 <= kept < 20 and "Traceback" not in err
    assert path.read_bytes().endswith(b"\r\n") and not (out / schemas.LOCK_NAME).exists()
    assert main(argv + ["--resume"]) == 0 and len(answered) == 20 - kept
    df = schemas.NEEDLE.read(path)
    assert len(df) == 20 and df.duplicated(list(schemas.NEEDLE.key)).sum() == 0


def test_a_second_signal_stops_at_once_keeping_whole_rows(ckpt, tmp_path):
    out = tmp_path / "run"
    proc = _start(_needle(ckpt, out, ",".join(str(i / 19) for i in range(20))))
    path = schemas.NEEDLE.path(out)
    _wait_for_rows(path, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err
    assert 1 <= len(schemas.NEEDLE.read(path)) < 20 and path.read_bytes().endswith(b"\r\n")
    assert not (out / schemas.LOCK_NAME).exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_profile_stops_after_the_cell_in_flight(tmp_path, monkeypatch, capsys, sig, code):
    """A real signal to this process while profile measures its first cell: that cell's row is
    written, no other cell is measured, and --resume measures the rest."""
    from yoco_cli import profile
    from yoco_core.perf import sweep
    from yoco_core.perf.hardware import Ceilings

    monkeypatch.setattr(profile, "_ceilings", lambda plan: Ceilings(1.0, 1.0))     # not what is tested
    real, calls = sweep.measure_cell, []
    before, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def signalled(*a, **k):
        calls.append(a[1:3])
        if len(calls) == 1:
            os.kill(os.getpid(), sig)
        return real(*a, **k)

    monkeypatch.setattr(sweep, "measure_cell", signalled)
    argv = ["profile", "--arch", "yoco", "--size", "tiny", "--ctx", "64,128", "--batch", "1", "--gen-tokens", "2",
            "--device", "cpu", "--out", str(tmp_path)]
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "interrupted" in line] == [
        "interrupted: 1 row kept, --resume continues"], err
    assert calls == [(64, 1)] and len(schemas.PROFILE.read(schemas.PROFILE.path(tmp_path))) == 1
    assert signal.getsignal(signal.SIGINT) is before and signal.getsignal(signal.SIGTERM) is before_term
    assert main(argv + ["--resume"]) == 0 and calls == [(64, 1), (128, 1)]
    assert not (tmp_path / schemas.LOCK_NAME).exists()


def test_a_throughput_search_stopped_by_ctrl_c_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    """--throughput: Ctrl-C while the first batch is measured (it runs out of memory, injected):
    its oom row is kept, exit 130; --resume steps down from it as the uninterrupted search would,
    and finishes the other context; a second --resume measures nothing."""
    from yoco_cli import profile
    from yoco_core.config import get_config
    from yoco_core.perf import analytic, sweep
    from yoco_core.perf.hardware import Ceilings

    monkeypatch.setattr(profile, "_ceilings", lambda plan: Ceilings(1.0, 1.0, 1.0))     # not what is tested
    reserve = sweep.decode_reserve(2)
    cfg = get_config("yoco-tiny")
    memory = sum(analytic.estimate_memory(cfg, 64, b, 4, None, reserve)["total"] for b in (6, 7)) / 2   # batch 6
    real, calls = sweep.measure_cell, []

    def signalled(*a, **k):
        calls.append(a[1:3])
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(sweep, "measure_cell", signalled)
    monkeypatch.setenv(sweep.INJECT_ENV, "yoco:64:6")
    argv = ["profile", "--throughput", "--arch", "yoco", "--size", "tiny", "--ctx", "64,128", "--gen-tokens", "2",
            "--memory-gb", repr(memory / 1e9), "--device", "cpu", "--out", str(tmp_path)]
    capsys.readouterr()
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "interrupted" in line] == [
        "interrupted: 1 row kept, --resume continues"], err
    path = schemas.PROFILE.path(tmp_path)
    [oom] = schemas.PROFILE.read(path).to_dict("records")
    assert (oom["status"], oom["batch"], calls) == ("oom", 6, [(64, 6)])
    monkeypatch.delenv(sweep.INJECT_ENV)
    assert main([*argv, "--resume"]) == 0
    df = schemas.PROFILE.read(path)
    assert [(int(r["ctx"]), int(r["batch"]), r["status"]) for r in df.to_dict("records")][:2] == [
        (64, 6, "oom"), (64, sweep.step_down(6), "ok")]
    assert len(df) == 3 and list(df["status"])[2] == "ok" and calls[1:] == [(64, 4), (128, int(df["batch"][2]))]
    assert df["note"][1].startswith("batch: stepped down from 6 (out of memory)")
    assert main([*argv, "--resume"]) == 0 and len(calls) == 3
    assert not (tmp_path / schemas.LOCK_NAME).exists()


# -- a CUDA error that loses the context -----------------------------------------------------
def test_what_counts_as_a_lost_cuda_context():
    import torch

    from yoco_core.perf.hardware import is_context_lost

    assert is_context_lost(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
    assert is_context_lost(RuntimeError("CUDA error: misaligned address"))
    assert is_context_lost(RuntimeError("an illegal memory access was encountered"))
    assert not is_context_lost(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_context_lost(RuntimeError("CUDA error: out of memory"))     # an allocation failure: oom
    assert not is_context_lost(RuntimeError("shape mismatch")) and not is_context_lost(ValueError("CUDA error"))


def _lost_line(err: str, out: Path, cell: str) -> None:
    """The one error line of a lost CUDA context, no traceback, nothing else said as an error."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: CUDA error in {cell}: ") and "illegal memory access" in lines[0]
    assert lines[0].endswith(f"; the CUDA context is lost: rows so far are in {schemas.PROFILE.path(out)}, "
                             "run again with --resume")


@pytest.mark.parametrize("when", ["in-the-cell", "at-the-release-after-it"])
@pytest.mark.parametrize("mode", [[], ["--throughput", "--batch", "2"]])
def test_a_lost_cuda_context_keeps_the_row_and_stops_with_one_line(tmp_path, monkeypatch, capsys, mode, when):
    """The CUDA error is sticky: once raised, every later CUDA call (the clean-up after the cell,
    closing the model) raises it again; it may surface only at the synchronize after the cell. The
    cell is an error row on disk, nothing more is measured or released, the run ends with one line
    and exit 1 (lock gone); --resume continues after it."""
    import torch

    from yoco_cli import profile
    from yoco_core.perf import runners, sweep
    from yoco_core.perf.hardware import Ceilings

    monkeypatch.setattr(profile, "_ceilings", lambda plan: Ceilings(1.0, 1.0, 1.0))     # not what is tested
    lost, calls, real = [], [], sweep.measure_cell

    def sticky(*a, **k):
        if lost:
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered\nSearch for ...")

    def measure(*a, **k):
        calls.append(a[1:3])
        if len(calls) == 2 and when == "in-the-cell":
            lost.append(True)
        sticky()
        res = real(*a, **k)
        if len(calls) == 2:
            lost.append(True)
        return res

    monkeypatch.setattr(sweep, "measure_cell", measure)
    for module in (sweep, runners):
        monkeypatch.setattr(module, "release", sticky)
    monkeypatch.setattr(sweep, "reset_memory", sticky)
    argv = ["profile", "--arch", "yoco", "--size", "tiny", "--ctx", "64,128,256", "--gen-tokens", "2",
            "--device", "cpu", "--out", str(tmp_path), *mode]
    capsys.readouterr()
    assert main(argv) == 1
    batch = 2 if mode else 1
    _lost_line(capsys.readouterr().err, tmp_path, f"yoco ctx 128 batch {batch}")
    assert calls == [(64, batch), (128, batch)]
    rows = schemas.PROFILE.read(schemas.PROFILE.path(tmp_path)).to_dict("records")
    assert [(r["ctx"], r["status"]) for r in rows] == [(64, "ok"), (128, "error")]
    assert rows[1]["note"].endswith("AcceleratorError: CUDA error: an illegal memory access was encountered")
    assert not (tmp_path / schemas.LOCK_NAME).exists()
    lost.clear()                                     # a new process: a new CUDA context
    assert main([*argv, "--resume"]) == 0 and calls[2:] == [(256, batch)]


def test_a_lost_cuda_context_in_a_real_process_is_one_line(tmp_path):
    """The injected illegal memory access (YOCO_PROFILE_INJECT_CUDA_ERROR) in a real `yoco profile`:
    exit 1, one line on stderr, the row on disk, the next cell not measured."""
    from yoco_core.perf import sweep

    p = subprocess.run([sys.executable, "-m", "yoco_cli.main", "profile", "--arch", "yoco", "--size", "tiny",
                        "--ctx", "64,128", "--batch", "1", "--gen-tokens", "2", "--device", "cpu",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, sweep.INJECT_CUDA_ERROR_ENV: "yoco:64:1", "COLUMNS": "300"})
    assert p.returncode == 1, p.stderr
    _lost_line(p.stderr, tmp_path, "yoco ctx 64 batch 1")
    [row] = schemas.PROFILE.read(schemas.PROFILE.path(tmp_path)).to_dict("records")
    assert (row["ctx"], row["status"]) == (64, "error") and "injected" in row["note"]
