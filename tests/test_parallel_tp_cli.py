"""`yoco needle --tp N` (yoco_cli.parallel, yoco_cli.needle): N gloo processes on the CPU, one
tensor-parallel group, write the one-process needle.csv; --gpus G --tp N shares the cells among G/N
groups; a Ctrl-C that reaches one rank stops the whole group after the row in flight; models that
cannot be split are refused in one line before any work."""
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import needle_content, run_yoco
from yoco_cli import schemas
from yoco_cli.main import main
from yoco_core import build_model, get_config, save_model
from yoco_core.parallel import data

BASE = ["needle", "--ctx", "512,1k", "--n-depths", "2", "--device", "cpu"]

# under torchrun: each rank records, per prompt, its place in the tensor-parallel group and the
# cell it ran; with SIGINT_RANK_1 set, rank 1 alone gets a Ctrl-C as its first prompt ends
RECORD = """
import json, os, signal
from yoco_core import needle as nd
from yoco_core.parallel.tensor import RowParallelLinear
real = nd.run_cell
def run_cell(model, ctx, depth, *a, **k):
    out = real(model, ctx, depth, *a, **k)
    sharded = sum(isinstance(m, RowParallelLinear) for m in model.modules())
    with open(os.path.join(os.environ["RECORD_DIR"], f"rank{os.environ['RANK']}.jsonl"), "a") as f:
        f.write(json.dumps([getattr(model, "tensor_parallel", None), sharded, ctx, depth]) + "\\n")
    if os.environ.get("SIGINT_RANK_1") and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGINT)
    return out
nd.run_cell = run_cell
from yoco_cli.main import run
run()
"""


def _checkpoint(folder: Path, **shape) -> str:
    cfg = get_config("yoco-tiny").replace(name="tp-test", dim=32, ffn_dim=64, n_layers=2, max_seq_len=4096, **shape)
    return str(save_model(build_model(cfg), folder))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Heads, KV heads, self-decoder heads and FFN width all divisible by 2."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "m", n_heads=2, n_kv_heads=2, n_self_heads=2)


@pytest.fixture(scope="module")
def one_process(ckpt, tmp_path_factory):
    """needle.csv as one process writes it."""
    out = tmp_path_factory.mktemp("one")
    assert main(BASE + ["-m", ckpt, "--out", str(out)]) == 0
    return needle_content(out)


def _records(folder: Path, n: int) -> list[list]:
    return [[json.loads(line) for line in (folder / f"rank{r}.jsonl").read_text().splitlines()] for r in range(n)]


def test_tp_2_on_the_cpu_writes_the_one_process_csv(ckpt, one_process, tmp_path):
    out = tmp_path / "tp"
    r = run_yoco(*BASE, "-m", ckpt, "--out", str(out), "--tp", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(needle_content(out), one_process)
    assert data.part_files(out, schemas.NEEDLE) == [] and not (out / schemas.LOCK_NAME).exists()
    device = pd.read_csv(out / "needle.csv")["device"]
    assert device.str.startswith("cpu").all() and device.str.endswith(" x2 (tp)").all()
    assert "--tp 2" in (out / "commands.txt").read_text()
    assert r.stderr.count("needle: ") == 1 and "tensor parallel over 2 processes" in r.stderr   # rank 0 speaks
    assert r.stdout.count("results:") == 1


def test_gpus_4_tp_2_is_two_groups_of_two_sharing_the_cells(ckpt, one_process, tmp_path):
    script, rec, out = tmp_path / "record.py", tmp_path / "rec", tmp_path / "dptp"
    script.write_text(RECORD)
    rec.mkdir()
    r = run_yoco(*BASE, "-m", ckpt, "--out", str(out), "--tp", "2", script=script, n=4, env={"RECORD_DIR": str(rec)})
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(needle_content(out), one_process)
    assert data.part_files(out, schemas.NEEDLE) == []
    assert "shared among 2 groups of 2" in r.stderr
    ranks = _records(rec, 4)
    for r_, cells in enumerate(ranks):                   # every rank sharded: its place, o_proj / down_proj split
        assert all(tp == [r_ % 2, 2] and sharded > 0 for tp, sharded, _, _ in cells), cells
    group = [[(c, d) for _, _, c, d in ranks[r_]] for r_ in range(4)]
    assert group[0] == group[1] and group[2] == group[3]    # a group runs the same prompts together
    assert sorted(group[0] + group[2]) == sorted(zip(one_process["ctx_requested"].astype(int),
                                                     one_process["depth"].astype(float)))


def test_a_ctrl_c_on_one_rank_stops_the_group_after_its_row_and_resumes(ckpt, one_process, tmp_path):
    script, rec, out = tmp_path / "record.py", tmp_path / "rec", tmp_path / "cut"
    script.write_text(RECORD)
    rec.mkdir()
    args = [*BASE, "-m", ckpt, "--out", str(out), "--tp", "2"]
    r = run_yoco(*args, script=script, n=2, env={"RECORD_DIR": str(rec), "SIGINT_RANK_1": "1"})
    assert r.returncode != 0 and r.stderr.count("interrupted: 1 row kept") == 2, r.stderr[-3000:]   # each rank: 130
    assert [len(cells) for cells in _records(rec, 2)] == [1, 1]       # both stopped before the second prompt
    assert len(schemas.NEEDLE.read(schemas.NEEDLE.path(out))) == 1
    assert main(args[:-2] + ["--resume"]) == 0                          # one process finishes it
    pd.testing.assert_frame_equal(needle_content(out), one_process)


def test_models_that_cannot_be_split_are_refused_in_one_line_before_any_work(tmp_path, capsys):
    indivisible = _checkpoint(tmp_path / "odd", n_heads=2, n_kv_heads=1, n_self_heads=4)
    hf = tmp_path / "gpt2"                    # a model_type we do not convert: transformers' own model
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_head": 3, "vocab_size": 300}))
    cases = [(indivisible, "--tp 2", "n_kv_heads=1 not divisible by 2"), (f"hf:{hf}", "--tp 2", "arch hf"),
             ("yoco-tiny", "--tp 3", "n_heads=4")]
    for model, tp, named in cases:
        out = tmp_path / f"out{len(named)}"
        assert main(BASE + ["-m", model, "--out", str(out), *tp.split()]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and tp in err and named in err, err
        assert not out.exists()                # refused before the results folder was made
    for extra, named in ((["--tp", "0"], "--tp 0"), (["--gpus", "3", "--tp", "2"], "multiple of 2")):
        assert main(BASE + ["-m", "yoco-tiny", "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, err


@pytest.mark.gpu
def test_tp_2_on_two_gpus_writes_the_one_gpu_csv(tmp_path):
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    args = ["needle", "-m", "yoco-tiny", "--ctx", "1k,4k", "--n-depths", "3", "--device", "cuda", "--dtype", "fp32"]
    one, two = tmp_path / "one", tmp_path / "two"
    r = run_yoco(*args, "--out", str(one))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_yoco(*args, "--out", str(two), "--tp", "2")             # NCCL all-reduces inside every forward
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(needle_content(two), needle_content(one))
    assert pd.read_csv(two / "needle.csv")["device"].str.endswith(" x2 (tp)").all()
