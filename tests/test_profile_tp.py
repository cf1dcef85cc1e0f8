"""`yoco profile --tp N` (yoco_cli.profile, yoco_core.perf): one rank's cost model against what a
sharded rank holds, two gloo processes on the CPU writing the one-process rows (gpus 2, parallel
tp2) as cells of their own on --resume, files without those columns upgraded, and the refusals."""
from __future__ import annotations

import csv
import dataclasses

import pandas as pd
import pytest
import torch

from conftest import run_yoco
from yoco_cli import profile, schemas
from yoco_cli.main import main
from yoco_core import build_model, get_config
from yoco_core.perf import analytic, runners, sweep

ARGS = ["profile", "--arch", "yoco,transformer", "--size", "tiny", "--ctx", "64,128", "--gen-tokens", "2",
        "--device", "cpu"]
# what a rank of a group measures or estimates for itself (its share), and the clocks' columns
PER_RANK = {"cache_gb", "est_gb", "decode_gb_per_token", "prefill_tflops", "prefill_share", "decode_share"}
TIMING = {"prefill_s", "warmup_prefill_s", "decode_ms", "decode_tok_s", "decode_s", "throughput_tok_s", "matmul_tflops", "copy_tbs",
          "read_tbs", "date"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread (as tests/test_profile.py: oversubscribed OpenMP threads spin on a shared
    2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake_pair():
    """A process group of two in this process, the other rank imagined (torch's fake backend: its
    collectives do nothing), to shard a model as rank 0 of two."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ["yoco-tiny", "yoco-swa-tiny", "transformer-tiny"])
def test_one_ranks_estimate_is_what_a_sharded_rank_holds(name, fake_pair):
    """After ``apply_tensor_parallel`` over two ranks: a rank's parameters are ``rank_params`` (the
    layers' linear weights halved, embeddings, norms and head whole) and its cache after a prefill
    is ``cache_bytes(tp=2)``; so the per-rank estimate fits a larger batch in the same memory."""
    from yoco_core.parallel.tensor import apply_tensor_parallel

    cfg = get_config(name)
    model = apply_tensor_parallel(build_model(cfg))
    assert sum(p.numel() for p in model.parameters()) == analytic.rank_params(cfg, 2) < cfg.n_params()
    ctx, batch, reserve = 40, 2, 5
    with torch.inference_mode():
        _, cache = model.prefill(torch.randint(0, cfg.vocab_size, (batch, ctx)), chunk_size=None, reserve=reserve)
    want = analytic.cache_bytes(cfg, ctx, batch, 4, reserve, tp=2)
    assert (cache.kv_nbytes(), cache.state_nbytes()) == (want["kv"], want["state"])
    assert want == {k: v // 2 for k, v in analytic.cache_bytes(cfg, ctx, batch, 4, reserve).items()}
    one, two = (analytic.estimate_memory(cfg, 4096, 8, 2, 1024, 10, tp) for tp in (1, 2))
    assert two["weights"] == analytic.rank_params(cfg, 2) * 2 and two["cache"] * 2 == one["cache"]
    assert two["activations"] < one["activations"]
    budget = one["total"] * 4
    assert analytic.largest_batch(cfg, 4096, 2, budget, 1024, 10, tp=2) > analytic.largest_batch(
        cfg, 4096, 2, budget, 1024, 10)
    flops = analytic.prefill_flops(cfg, 512, 1, tp=2)
    assert flops["lm_head"] == analytic.prefill_flops(cfg, 512)["lm_head"]          # the head is whole
    assert flops["linear"] * 2 == analytic.prefill_flops(cfg, 512)["linear"]


def test_cpu_ranks_share_the_memory_a_budget_is_each_ranks(monkeypatch):
    monkeypatch.setattr(sweep, "available_memory", lambda device: 16_000_000_000)
    shared = sweep.Machine.of("cpu", sharing=2)
    assert shared.memory == 8_000_000_000 and "1/2 share of the device's 16.0 GB" in shared.memory_words()
    assert sweep.Machine.of("cpu", 3_000_000_000, sharing=2).memory == 3_000_000_000


def _rows(folder) -> list[dict]:
    with open(schemas.PROFILE.path(folder), newline="") as f:
        return list(csv.DictReader(f))


def test_tp_2_on_the_cpu_writes_the_one_process_rows_as_cells_of_their_own(tmp_path, monkeypatch):
    """``--tp 2`` (two gloo processes) resuming a one-process profile.csv measures every cell anew
    (gpus and parallel are part of the key); its rows equal the one-process rows in every column but
    the clocks', gpus 2 / parallel tp2, and a rank's share: its cache, measured, is half the whole
    one, and its estimate is the per-rank one."""
    monkeypatch.setattr(profile, "_ceilings", lambda plan: sweep.Ceilings(1.0, 1.0, 1.0))
    out = tmp_path / "p"
    assert main([*ARGS, "--out", str(out)]) == 0
    r = run_yoco(*ARGS, "--out", str(out), "--resume", "--tp", "2", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("yoco profile") == 1 and r.stderr.count("profile: 4 cells") == 1      # rank 0 speaks
    assert "tensor parallel over 2 processes" in r.stderr
    rows = _rows(out)
    one, two = rows[:4], rows[4:]
    assert len(two) == 4 and not (out / schemas.LOCK_NAME).exists()
    assert [(x["gpus"], x["parallel"]) for x in one] == [("1", "")] * 4
    assert [(x["gpus"], x["parallel"]) for x in two] == [("2", "tp2")] * 4
    same = [c for c in schemas.PROFILE.names if c not in PER_RANK | TIMING | {"gpus", "parallel"}]
    assert [{c: x[c] for c in same} for x in two] == [{c: x[c] for c in same} for x in one]
    assert all(x["status"] == "ok" for x in two)
    for a, b in zip(one, two):
        assert float(b["cache_gb"]) * 2 == pytest.approx(float(a["cache_gb"]), rel=1e-12)
        cfg = get_config(a["model"])
        est = analytic.estimate_memory(cfg, int(a["ctx"]), 1, 4, None, sweep.decode_reserve(2), tp=2)["total"]
        assert float(b["est_gb"]) == pytest.approx(est / 1e9, rel=1e-9)
        assert float(b["est_gb"]) < float(a["est_gb"])
    assert "--tp 2" in (out / "commands.txt").read_text()

    # done on --resume: each layout's rows complete its own cells, not the other's
    plan = profile._plan(None, "yoco,transformer", "tiny", "64,128", "1", 2, "auto", "gret", 1, False, False, None,
                         "cpu", "auto", 0)
    machine = sweep.Machine.of("cpu")
    for tp, mine in ((1, one), (2, two)):
        keys = {profile._key(dataclasses.replace(plan, tp=tp), machine, c) for c in plan.cells()}
        assert keys == {schemas.PROFILE.key_of(x) for x in mine}


def test_tp_2_prefills_one_sequence_at_a_time_and_steps_down_alike(tmp_path):
    """``--tp 2 --throughput --timed-prefills 1``: both halves run on both ranks (the decode-only
    cell at the batch, then the batch-1 prefills); an out-of-memory injected into the batch's decode
    (both ranks) steps the group down alike; rank 0's rows say tp2 and timed_prefills 1."""
    argv = ["profile", "--throughput", "--arch", "yoco", "--size", "tiny", "--ctx", "64", "--gen-tokens", "2",
            "--batch", "3", "--timed-prefills", "1", "--device", "cpu", "--out", str(tmp_path), "--tp", "2"]
    r = run_yoco(*argv, env={"OMP_NUM_THREADS": "1", sweep.INJECT_ENV: "yoco:64:3"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(tmp_path)
    assert [(x["batch"], x["status"], x["parallel"], x["timed_prefills"]) for x in rows] == [
        ("3", "oom", "tp2", "1"), ("2", "ok", "tp2", "1")]
    assert "prefill: 1 of 2 sequences prefilled one at a time" in rows[1]["note"]
    assert float(rows[1]["throughput_tok_s"]) == pytest.approx(
        2 * 2 / (float(rows[1]["prefill_s"]) + float(rows[1]["decode_s"])))


def test_a_file_without_gpus_and_parallel_resumes_as_one_process_rows(tmp_path, monkeypatch):
    """profile.csv written before the gpus and parallel columns: its rows are one process's cells
    (done on --resume), and the first append rewrites it with gpus 1 and parallel blank."""
    monkeypatch.setattr(profile, "_ceilings", lambda plan: sweep.Ceilings(1.0, 1.0, 1.0))
    calls = []
    real = sweep.measure_cell
    monkeypatch.setattr(sweep, "measure_cell", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    argv = ["profile", "--arch", "yoco", "--size", "tiny", "--ctx", "64", "--gen-tokens", "2", "--device", "cpu",
            "--out", str(tmp_path)]
    assert main(argv) == 0 and calls == [64]
    old = [c for c in schemas.PROFILE.names if c not in ("gpus", "parallel")]
    path = schemas.PROFILE.path(tmp_path)
    pd.read_csv(path, dtype=str, keep_default_na=False)[old].to_csv(path, index=False)
    assert schemas.PROFILE.is_layout(old)
    assert main([*argv, "--resume"]) == 0 and calls == [64]                      # its cell is done
    assert main([*argv, "--resume", "--ctx", "64,128"]) == 0 and calls == [64, 128]
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == schemas.PROFILE.names
    assert [(x["gpus"], x["parallel"]) for x in _rows(tmp_path)] == [("1", ""), ("1", "")]


@pytest.mark.parametrize("extra,says", [
    (["--arch", "hf", "--tp", "2"], "--tp 2: tensor parallel splits our own models (--arch yoco, transformer), not hf"),
    (["--arch", "yoco,fla", "--tp", "2"], "not fla"),
    (["--arch", "yoco", "--tp", "3"], "--tp 3: cannot split yoco-tiny over 3 tensor-parallel ranks: n_heads=4"),
    (["--arch", "transformer", "--tp", "0"], "--tp 0: must be at least 1"),
])
def test_what_tensor_parallel_cannot_split_is_one_line_exit_2(extra, says, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "build_runner", lambda *a, **k: pytest.fail("built a model"))
    monkeypatch.setattr(runners, "check_peer", lambda arch, device=None: None)   # refused for --tp, not a package
    assert main(["profile", "--size", "tiny", "--ctx", "64", "--device", "cpu", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not schemas.PROFILE.path(tmp_path).exists()


def test_profile_under_more_processes_than_tp_is_refused(tmp_path, capsys, monkeypatch):
    """torchrun with more processes than one group: one line (profile shares no cells among groups)."""
    for k, v in {"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    assert main([*ARGS, "--out", str(tmp_path), "--tp", "2"]) == 2
    assert "--tp 2: profile runs one tensor-parallel group of 2 process(es), not 4" in capsys.readouterr().err
    assert not schemas.PROFILE.path(tmp_path).exists()
