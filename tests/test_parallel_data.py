"""Data-parallel sweeps (yoco_core.parallel.data, `yoco needle --gpus N` / under torchrun): the cells
shared over ranks, part files merged into the one needle.csv a single process writes, --resume
with any number of processes after a rank died."""
import shutil

import pandas as pd
import pytest

from conftest import needle_content, run_yoco
from yoco_cli import schemas
from yoco_cli.main import main
from yoco_cli.parallel import without_option
from yoco_core import build_model, get_config, save_model
from yoco_core.parallel import data



# -- the library -----------------------------------------------------------------------------------
def test_world_comes_from_the_torchrun_environment():
    assert data.world({}) == data.World(0, 1, 0) and not data.world({}).parallel
    w = data.world({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (w.rank, w.size, w.local_rank, w.parallel, w.main) == (2, 4, 0, True, False)
    for bad in ({"WORLD_SIZE": "two", "RANK": "0"}, {"WORLD_SIZE": "2", "RANK": "2"}):
        with pytest.raises(ValueError, match="torchrun environment"):
            data.world(bad)


def test_shards_cover_every_cell_once_and_each_rank_gets_every_length():
    cells = [(c, d) for c in (1, 2, 4) for d in range(5)]
    for n in (1, 2, 3, 7, 20):
        shards = [data.shard(cells, data.World(r, n, r)) for r in range(n)]
        assert sorted(x for s in shards for x in s) == sorted(cells)
        assert shards == [data.shard(cells, data.World(r, n, r)) for r in range(n)]    # the same on every rank
    assert {c for c, _ in data.shard(cells, data.World(1, 2, 1))} == {1, 2, 4}


def test_device_is_the_local_rank_gpu_and_one_gpu_for_all_is_refused():
    two = data.World(1, 2, 1)
    assert data.device_for("cpu", two) == "cpu" and data.device_for("cuda:1", data.World()) == "cuda:1"
    with pytest.raises(ValueError, match="use --device cuda"):
        data.device_for("cuda:1", two)


def _row(ctx, depth, prediction="1234567"):
    return dict(model="m", arch="yoco", task="single", haystack="noise", chat_template="none", ctx_requested=ctx,
                ctx_tokens=ctx, depth=depth, n_needles=1, trial=0, seed=0, expected="1234567",
                prediction=prediction, score=1.0, prefill_seconds=0.5, device="cpu", dtype="fp32",
                date="2026-12-02T00:00:00Z")


def test_merge_puts_the_part_rows_after_the_file_in_grid_order_once_each(tmp_path):
    N = schemas.NEEDLE
    grid = [N.key_of(_row(c, d)) for c in (512, 1024) for d in (0.0, 1.0)]
    N.append_row(tmp_path, _row(64, 0.5))                        # an earlier run's row, not in the grid
    part = {r: data.part_schema(N, r) for r in (0, 1, 5)}
    for r, cells in ((0, [(1024, 1.0), (512, 0.0)]), (1, [(512, 1.0), (512, 0.0)]), (5, [(128, 0.0)])):
        for c, d in cells:
            part[r].append_row(tmp_path, _row(c, d, prediction=f"rank {r}, with, commas\nand a line"))
    with (tmp_path / "needle.rank1.csv").open("ab") as f:
        f.write(b"model,yoco,sin")                                # a rank killed in the middle of a write
    assert [r for r, _ in data.part_files(tmp_path, N)] == [0, 1, 5]
    assert len(data.done_keys(tmp_path, N)) == 5

    assert data.merge_parts(tmp_path, N, grid) == 4
    df = N.read(N.path(tmp_path))
    assert list(zip(df["ctx_requested"], df["depth"])) == [(64, 0.5), (128, 0.0), (512, 0.0), (512, 1.0),
                                                           (1024, 1.0)]
    assert df["prediction"][2] == "rank 0, with, commas\nand a line"       # the first part holding the cell
    assert data.part_files(tmp_path, N) == [] and (tmp_path / "needle.rank1.csv.partial").exists()
    assert data.merge_parts(tmp_path, N, grid) == 0


# -- the command -----------------------------------------------------------------------------------
BASE = ["needle", "--ctx", "512,1k", "--n-depths", "3", "--device", "cpu"]

# a rank that dies: rank 1 is killed (SIGKILL) as it starts its second prompt, its first row on disk
KILL_RANK_1 = """
import os, signal
from yoco_core import needle as nd
real, calls = nd.run_cell, []
def run_cell(*a, **k):
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
nd.run_cell = run_cell
from yoco_cli.main import run
run()
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = get_config("yoco-tiny").replace(name="parallel-test", dim=32, n_heads=2, n_kv_heads=1, ffn_dim=64,
                                          n_layers=2, max_seq_len=4096)
    return str(save_model(build_model(cfg), tmp_path_factory.mktemp("ckpt") / "m"))


@pytest.fixture(scope="module")
def one_process(ckpt, tmp_path_factory):
    """needle.csv as one process writes it."""
    out = tmp_path_factory.mktemp("one")
    assert main(BASE + ["-m", ckpt, "--out", str(out)]) == 0
    return needle_content(out)


def test_gpus_2_on_the_cpu_writes_the_one_process_csv(ckpt, one_process, tmp_path):
    out = tmp_path / "two"
    r = run_yoco(*BASE, "-m", ckpt, "--out", str(out), "--gpus", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(needle_content(out), one_process)
    assert data.part_files(out, schemas.NEEDLE) == [] and not (out / schemas.LOCK_NAME).exists()
    assert "--gpus 2" in (out / "commands.txt").read_text()
    assert r.stderr.count("needle: ") == 1 and "shared among 2 processes" in r.stderr     # rank 0 speaks
    assert "results:" in r.stdout


def test_a_rank_killed_mid_run_loses_nothing_and_resumes_with_1_or_3_processes(ckpt, one_process, tmp_path, capsys):
    script = tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    cut = tmp_path / "cut"
    args = [*BASE, "-m", ckpt, "--out", str(cut)]
    r = run_yoco(*args, script=script, n=2)
    assert r.returncode != 0
    parts = dict(data.part_files(cut, schemas.NEEDLE))
    assert len(schemas.NEEDLE.read(parts[1])) == 1                 # the row rank 1 measured before it died
    assert not schemas.NEEDLE.path(cut).exists()                   # nothing merged: the run did not end

    capsys.readouterr()
    assert main(args) == 2                                          # without --resume: refused, one line
    lines = capsys.readouterr().err.strip().splitlines()
    # the killed run may have died holding the folder's lock (which process held it at the kill is
    # a race): then taking it over is said first, on a line of its own
    if len(lines) == 2 and "took over the lock of pid" in lines[0]:
        lines = lines[1:]
    err = "\n".join(lines)
    # it names the first part file left: rank 0's, unless rank 0 had written no row yet when rank 1
    # died (a race: on one run of the suite, 2026-12-03, only needle.rank1.csv was there)
    first = data.part_files(cut, schemas.NEEDLE)[0][1].name
    assert len(lines) == 1 and f"{first}: rows of a run in several processes" in err and "--resume" in err, err
    again = tmp_path / "again"
    shutil.copytree(cut, again)
    assert main(args + ["--resume"]) == 0                          # one process
    pd.testing.assert_frame_equal(needle_content(cut), one_process)
    assert data.part_files(cut, schemas.NEEDLE) == []

    args[args.index(str(cut))] = str(again)
    r = run_yoco(*args, "--resume", "--gpus", "3")                    # three processes
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(needle_content(again), one_process)
    assert data.part_files(again, schemas.NEEDLE) == []


def test_gpus_option_refusals_and_removal(ckpt, tmp_path, capsys):
    assert main(BASE + ["-m", ckpt, "--out", str(tmp_path), "--gpus", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--gpus 0" in err
    assert not (tmp_path / "needle.csv").exists()
    assert without_option(["needle", "--gpus", "2", "--ctx", "1k", "--procs=3"]) == ["needle", "--ctx", "1k"]


@pytest.mark.gpu
def test_gpus_2_on_two_gpus_writes_the_one_gpu_csv(tmp_path):
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    args = ["needle", "-m", "yoco-tiny", "--ctx", "1k,4k", "--n-depths", "5", "--device", "cuda"]
    one, two = tmp_path / "one", tmp_path / "two"
    r = run_yoco(*args, "--out", str(one))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_yoco(*args, "--out", str(two), "--gpus", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(needle_content(two), needle_content(one))
    assert data.part_files(two, schemas.NEEDLE) == []
