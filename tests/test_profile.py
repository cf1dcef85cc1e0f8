"""`yoco profile` on the CPU: the analytic model against real caches and a FLOP counter, the
ceilings, the whole sweep on tiny presets (CSV schema, plots, an injected out-of-memory, --resume,
files of older layouts), the throughput protocol (batch search, arithmetic, CSV, report), and bad
input."""
from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import small_model
from yoco_cli import schemas
from yoco_cli.main import main
from yoco_core import build_model, get_config, save_model
from yoco_core.perf import analytic, runners, sweep

GB = 1e9


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine oversubscribed OpenMP threads spin and
    make these tiny models several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- analytic model ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind,T", [("yoco-gret", 40), ("yoco-swa", 9), ("yoco-swa", 40), ("transformer", 40)])
def test_cache_bytes_match_the_models_cache(kind, T):
    model = small_model(kind)
    reserve = 7
    ids = torch.randint(0, model.config.vocab_size, (3, T), generator=torch.Generator().manual_seed(0))
    _, cache = model.prefill(ids, chunk_size=16, reserve=reserve)
    want = analytic.cache_bytes(model.config, T, 3, 4, reserve=reserve)
    assert cache.kv_nbytes() == want["kv"]
    assert cache.state_nbytes() == want["state"]


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa", "transformer"])
@pytest.mark.parametrize("T", [100, 128])
def test_prefill_flops_match_a_flop_counter(kind, T):
    """Every matmul prefill runs (linear layers, lm_head on the last position, gRet's chunkwise
    einsums) as counted by torch's FlopCounterMode; SDPA is not counted on the CPU, so the
    attention part is left out of the comparison."""
    model = small_model(kind)
    ids = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter:
        model.prefill(ids)
    parts = analytic.prefill_flops(model.config, T, 2)
    expected = parts["linear"] + parts["lm_head"] + parts["mixer"]
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)
    assert parts["attention"] > 0
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


def test_prefill_flops_scale_linear_for_yoco_quadratic_for_transformer():
    y, t = get_config("yoco-3b"), get_config("transformer-3b")
    T = 256 * 1024
    ry = analytic.prefill_flops(y, 2 * T)["total"] / analytic.prefill_flops(y, T)["total"]
    rt = analytic.prefill_flops(t, 2 * T)["total"] / analytic.prefill_flops(t, T)["total"]
    assert 1.99 < ry < 2.05
    assert rt > 2.5
    # the Transformer's attention term is about 2 T^2 d per layer
    att = analytic.prefill_flops(t, T)["attention"]
    assert att == pytest.approx(2 * T * T * t.dim * t.n_layers, rel=1e-4)


def test_decode_bytes_match_the_issue_numbers():
    """YOCO-3B at 1M: ~6.5 GB of weights + 13 x 4.3 GB of KV; Transformer-3B at 256K: ~6.5 + 27.9 GB."""
    y = analytic.decode_bytes(get_config("yoco-3b"), 1 << 20, 1, 2)
    kv_layer = 2 * (1 << 20) * 8 * 128 * 2
    assert kv_layer / GB == pytest.approx(4.29, abs=0.01)
    assert 5.5 < y["weights"] / GB < 7.0
    assert y["cache"] == 13 * kv_layer + 13 * 24 * 128 * 128 * 4      # + the gRet states (float32)
    t = analytic.decode_bytes(get_config("transformer-3b"), 256 * 1024, 1, 2)
    assert t["cache"] / GB == pytest.approx(27.9, abs=0.05)
    assert 5.5 < t["weights"] / GB < 7.0
    # batch multiplies the cache, not the weights
    y4 = analytic.decode_bytes(get_config("yoco-3b"), 1 << 20, 4, 2)
    assert y4["weights"] == y["weights"] and y4["cache"] == 4 * y["cache"]


def test_memory_estimate_parts():
    cfg = get_config("yoco-3b")
    full = analytic.estimate_memory(cfg, 1 << 20, 1, 2, chunk=None)
    chunked = analytic.estimate_memory(cfg, 1 << 20, 1, 2, chunk=32768)
    assert full["weights"] == cfg.n_params() * 2
    assert chunked["cache"] == full["cache"] > 2 * (1 << 20) * 1024 * 2
    assert chunked["activations"] < full["activations"] / 16
    assert chunked["total"] == sum(v for k, v in chunked.items() if k != "total")
    # YOCO-3B at 1M in 32K chunks: 6.9 GB of weights + 4.3 GB of KV + a few GB of chunk activations
    assert (chunked["weights"] + chunked["cache"]) / GB < 11.5 < chunked["total"] / GB < 17
    t = analytic.estimate_memory(get_config("transformer-3b"), 1 << 20, 1, 2)
    assert t["total"] > 80e9                    # does not fit an 80 GB GPU: skipped by estimate


def test_tensor_nbytes_counts_shared_storage_once():
    a = torch.zeros(10, 4)
    cache = {"x": [a, a[2:], (a,)], "y": torch.zeros(3, dtype=torch.float64)}
    assert runners.tensor_nbytes(cache) == a.nbytes + 3 * 8


def test_run_cell_records_injected_oom_and_the_runner_still_works(monkeypatch):
    runner = runners.build_runner("yoco", "tiny", "cpu", torch.float32, max_tokens=256)
    monkeypatch.setenv(sweep.INJECT_ENV, "yoco:48:1")
    res = sweep.run_cell(runner, 48, 1, 2, None)
    assert res.status == "oom" and "injected" in res.note and res.prefill_s is None
    res = sweep.run_cell(runner, 48, 2, 2, None)
    assert res.status == "ok" and res.prefill_s > 0 and res.decode_ms > 0
    assert res.cache_bytes == sum(analytic.cache_bytes(runner.config, 48, 2, 4, reserve=sweep.decode_reserve(2)).values())

    def broken(ids, cache):
        raise ValueError("kernel exploded\nsecond line")

    monkeypatch.setattr(runner, "decode", broken)
    res = sweep.run_cell(runner, 48, 2, 2, None)
    assert res.status == "error" and res.note == "ValueError: kernel exploded"


def _layout(cache) -> tuple:
    """What a decode step's work depends on: the buffers' and states' shapes, the fill, the bytes."""
    states = [tuple(t.shape for t in (s if isinstance(s, tuple) else (s,))) for s in cache.states]
    return cache.batch, cache.length, cache.capacity, cache.nbytes(), states


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa", "transformer"])
def test_fill_random_is_laid_out_as_a_prefill_leaves_it(kind):
    """Decode-only cells start from ``fill_random``: same buffers, capacity, fill length and bytes
    as after a real prefill, so each decode step does the same work; decoding from it runs."""
    model = small_model(kind)
    T, reserve = 40, 5
    _, real = model.prefill(torch.randint(0, 256, (2, T)), reserve=reserve)
    fake = model.new_cache(2, T + reserve)
    fake.fill_random(T, torch.Generator().manual_seed(3))
    assert (fake.length, fake.capacity, fake.nbytes()) == (real.length, real.capacity, real.nbytes())
    assert _layout(fake) == _layout(real)
    assert all(b.k[:, :, :T].std() > 0.5 for b in fake.buffers())      # random, not zeros
    logits, fake = model.decode(torch.zeros(2, 1, dtype=torch.long), fake)
    assert fake.length == T + 1 and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="exceed the cache's capacity"):
        model.new_cache(2, 8).fill_random(9, torch.Generator())


@pytest.mark.parametrize("arch,self_decoder", [("yoco", "gret"), ("yoco", "swa"), ("transformer", "gret")])
def test_decode_only_cell_decodes_from_the_cache_a_prefill_cell_does(arch, self_decoder, monkeypatch):
    """The timed decode steps of a decode-only cell and of a full cell start from caches of one
    layout (the runner's random cache vs a real prefill), the one ``analytic.cache_bytes`` counts."""
    runner = runners.build_runner(arch, "tiny", "cpu", torch.float32, max_tokens=256, self_decoder=self_decoder)
    seen, real = [], runner.prepare_decode
    monkeypatch.setattr(runner, "prepare_decode", lambda cache: seen.append(_layout(cache)) or real(cache))
    full = sweep.measure_cell(runner, 48, 2, 2, None)
    timed_full = seen[-1]
    only = sweep.measure_cell(runner, 48, 2, 2, None, decode_only=True)
    assert seen[-1] == timed_full and timed_full[1] == 48
    want = sum(analytic.cache_bytes(runner.config, 48, 2, 4, reserve=sweep.decode_reserve(2)).values())
    assert full.cache_bytes == only.cache_bytes == timed_full[3] == want
    assert only.prefill_s is None and only.decode_ms > 0 and full.prefill_s > 0


def test_oom_blockers_are_per_model_and_dtype():
    """An out-of-memory row blocks larger cells of its own model in its own dtype only: a gRet and
    an SWA YOCO of one size in one --out do not share it."""
    rows = [{"status": "oom", "dtype": "bf16", "model": "yoco-tiny", "ctx": 64, "batch": 1},
            {"status": "ok", "dtype": "fp32", "model": "yoco-tiny", "ctx": 32, "batch": 1},
            {"status": "oom", "dtype": "float32", "model": "yoco-tiny", "ctx": 128, "batch": 1}]
    blockers = sweep.Blockers.from_rows(rows, "fp32")
    swa = sweep.Plan(archs=["yoco"], sizes=["tiny"], ctxs=[64, 128, 256], batches=[1], self_decoder="swa")
    assert [c.model for c in swa.cells()] == ["yoco-swa-tiny"] * 3
    assert [blockers.blocker(c) for c in swa.cells()] == [None] * 3
    gret = sweep.Plan(archs=["yoco"], sizes=["tiny"], ctxs=[64, 128, 256], batches=[1, 2])
    assert [blockers.blocker(c) for c in gret.cells()] == [None, (128, 1), (128, 1)] * 2


def test_a_record_is_a_profile_row():
    assert {f.name for f in dataclasses.fields(sweep.Record)} == set(schemas.PROFILE.names)


def test_decode_only_sweep_has_no_prefill_and_refuses_peers(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["profile", "--arch", "yoco,transformer", "--size", "tiny", "--ctx", "64,128", "--batch", "1,3",
                 "--decode-only", "--gen-tokens", "2", "--device", "cpu", "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert all(r["prefill_s"] == "" and float(r["decode_ms"]) > 0 and "decode only" in r["note"] for r in rows)
    capsys.readouterr()
    assert main(["profile", "--arch", "yoco,hf", "--decode-only", "--device", "cpu", "--out", str(tmp_path / "e")]) == 2
    assert "--decode-only works with" in capsys.readouterr().err


def test_cells_over_memory_by_estimate_are_skipped_unbuilt(tmp_path, monkeypatch):
    est = analytic.estimate_memory(get_config("yoco-tiny"), 96, 1, 4, reserve=sweep.decode_reserve(2))["total"]
    monkeypatch.setattr(sweep, "available_memory", lambda device: est - 1)
    monkeypatch.setattr(sweep, "build_runner", lambda *a, **k: pytest.fail("built a model for skipped cells"))
    assert main(["profile", "--arch", "yoco", "--size", "tiny", "--ctx", "96,192", "--batch", "1",
                 "--gen-tokens", "2", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert float(rows[0]["est_gb"]) * GB == pytest.approx(est) and "exceeds" in rows[0]["note"]


# -- the sweep ---------------------------------------------------------------------------------
ARGS = ["profile", "--size", "tiny", "--batch", "1,2", "--gen-tokens", "2", "--device", "cpu"]


def _rows(out):
    with open(out / "profile.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_schema_plots_oom_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "prof"
    monkeypatch.setenv(sweep.INJECT_ENV, "yoco:128:1")
    argv = [*ARGS, "--arch", "yoco,transformer,hf", "--ctx", "64,128", "--out", str(out)]
    rc = main(argv)
    assert rc == 0
    with open(out / "profile.csv", newline="") as f:
        assert next(csv.reader(f)) == schemas.PROFILE.names
    df = schemas.PROFILE.read(out / "profile.csv")
    assert len(df) == 12
    status = {(r["arch"], int(r["ctx"]), int(r["batch"])): r["status"] for r in df.to_dict("records")}
    assert status.pop(("yoco", 128, 1)) == "oom"
    assert status.pop(("yoco", 128, 2)) == "skipped"      # larger than a cell that ran out of memory
    assert set(status.values()) == {"ok"}                 # the sweep went on, same model included
    oom = df[df["status"] == "oom"].iloc[0]
    assert oom["est_gb"] > 0 and "injected" in oom["note"]

    ok = df[df["status"] == "ok"]
    for col in ("prefill_s", "decode_ms", "decode_tok_s", "cache_gb", "est_gb", "prefill_tflops",
                "prefill_share", "decode_gb_per_token", "decode_share", "matmul_tflops", "copy_tbs", "read_tbs",
                "params"):
        assert (ok[col] > 0).all(), col
    assert list(ok["decode_share"]) == pytest.approx(
        list(ok["decode_gb_per_token"] * GB / (ok["decode_ms"] / 1e3) / (ok["read_tbs"] * 1e12)))
    assert ok[["decode_s", "throughput_tok_s"]].isna().all().all()      # throughput mode only
    assert set(ok["mode"]) == {"full"} and list(ok["timed_steps"]) == list(ok["gen_tokens"])
    assert list(ok["decode_tok_s"]) == pytest.approx(list(ok["batch"] * 1e3 / ok["decode_ms"]))
    assert ok["peak_alloc_gb"].isna().all()               # no GPU: no peak measured, none invented
    assert set(ok["dtype"]) == {"fp32"} and set(ok["gen_tokens"]) == {2}
    assert set(ok["model"]) == {"yoco-tiny", "transformer-tiny", "hf-llama-tiny"}
    assert ok["device"].str.startswith("cpu").all() and (ok["torch"] == torch.__version__).all()
    # measured cache sizes: ours as allocated (prefill + room for the decoded tokens), HF's exact
    cfg_t = get_config("transformer-tiny")
    for r in ok.to_dict("records"):
        T, B = int(r["ctx"]), int(r["batch"])
        if r["arch"] == "hf":
            want = analytic.cache_bytes(cfg_t, T, B, 4)["kv"]
        else:
            cfg = get_config(r["model"])
            want = sum(analytic.cache_bytes(cfg, T, B, 4, reserve=sweep.decode_reserve(2)).values())
        assert r["cache_gb"] * GB == pytest.approx(want), (r["arch"], T, B)

    for name in ("profile_memory.png", "profile_prefill.png", "profile_throughput.png",
                 "profile_decode_latency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "profile --size tiny" in (out / "commands.txt").read_text()
    text = capsys.readouterr().out
    assert "yoco profile" in text and "oom" in text and "skipped" in text

    # without --resume an existing profile.csv is refused (two runs never mix), one line, exit 2
    capsys.readouterr()
    assert main([*ARGS, "--arch", "yoco", "--ctx", "64", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1

    # --resume: nothing measured twice
    calls = []
    real = sweep.measure_cell
    monkeypatch.setattr(sweep, "measure_cell", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    monkeypatch.delenv(sweep.INJECT_ENV)
    assert main([*ARGS, "--arch", "yoco,transformer,hf", "--ctx", "64,128", "--out", str(out), "--resume"]) == 0
    assert calls == [] and len(_rows(out)) == 12
    # a larger context: only the new cells run; the earlier OOM still rules out yoco 256 x 1 and x 2
    assert main([*ARGS, "--arch", "yoco,transformer", "--ctx", "64,128,256", "--out", str(out), "--resume"]) == 0
    assert sorted(calls) == [(256, 1), (256, 2)]
    rows = _rows(out)
    assert len(rows) == 16
    new = {(r["arch"], r["ctx"], r["batch"]): r["status"] for r in rows[12:]}
    assert new == {("yoco", "256", "1"): "skipped", ("yoco", "256", "2"): "skipped",
                   ("transformer", "256", "1"): "ok", ("transformer", "256", "2"): "ok"}


@pytest.fixture
def measured(monkeypatch):
    """The (ctx, batch) of every cell measured; the ceilings not measured (not what is tested)."""
    from yoco_cli import profile
    from yoco_core.perf.hardware import Ceilings

    monkeypatch.setattr(profile, "_ceilings", lambda plan: Ceilings(1.0, 1.0, 1.0))
    calls, real = [], sweep.measure_cell
    monkeypatch.setattr(sweep, "measure_cell", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    return calls


ONE_CELL = ["profile", "--arch", "yoco", "--size", "tiny", "--ctx", "64", "--batch", "1", "--gen-tokens", "2",
            "--device", "cpu"]


def test_resume_measures_the_cells_of_another_setting(tmp_path, measured, monkeypatch):
    """--decode-only, --gen-tokens and --chunk-size change what a cell measures: a --resume with
    another one measures its cells; with the same one (or a chunk that comes to the same effective
    chunk) it measures nothing. An out-of-memory of one setting blocks nothing of another."""
    argv = [*ONE_CELL, "--out", str(tmp_path)]
    monkeypatch.setenv(sweep.INJECT_ENV, "yoco:64:1")
    assert main(argv) == 0 and len(measured) == 1
    monkeypatch.delenv(sweep.INJECT_ENV)
    assert main([*argv, "--resume", "--ctx", "64,128"]) == 0 and len(measured) == 1   # 128 blocked by the oom
    for other in (["--gen-tokens", "3"], ["--chunk-size", "32"], ["--decode-only"]):
        n = len(measured)
        assert main([*argv, "--resume", *other]) == 0 and len(measured) == n + 1, other
        assert main([*argv, "--resume", *other]) == 0 and len(measured) == n + 1, other
    assert main([*argv, "--resume", "--chunk-size", "0"]) == 0 and len(measured) == 4    # auto at 64: unchunked
    assert main([*argv, "--resume", "--gen-tokens", "3", "--ctx", "64,128"]) == 0
    assert measured[4:] == [(128, 1)]               # the oom at --gen-tokens 2 does not block it
    rows = _rows(tmp_path)
    got = {(r["mode"], r["gen_tokens"], r["chunk_size"], r["ctx"]): r["status"] for r in rows}
    assert got == {("full", "2", "0", "64"): "oom", ("full", "2", "0", "128"): "skipped",
                   ("full", "3", "0", "64"): "ok", ("full", "2", "32", "64"): "ok",
                   ("decode-only", "2", "0", "64"): "ok", ("full", "3", "0", "128"): "ok"}


def _drop_column(path, column: str) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [c for c in rows[0] if c != column]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


# profile.csv's columns before read_tbs, timed_steps, decode_s and throughput_tok_s (commit fbfc9d3)
PREVIOUS_PROFILE_COLUMNS = [
    "arch", "model", "size", "params", "ctx", "batch", "status", "prefill_s", "decode_ms", "decode_tok_s",
    "peak_alloc_gb", "peak_reserved_gb", "cache_gb", "est_gb", "prefill_tflops", "prefill_share",
    "decode_gb_per_token", "decode_share", "matmul_tflops", "copy_tbs", "mode", "gen_tokens", "chunk_size",
    "device", "dtype", "torch", "triton", "date", "note"]


def _keep_columns(path, columns: list[str]) -> list[dict]:
    """Rewrite ``path`` with only ``columns`` (in that order), as an older version wrote it."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return [{c: r[c] for c in columns} for r in rows]


def test_a_csv_of_the_previous_layout_resumes_and_is_upgraded_with_blanks(tmp_path, measured):
    """A profile.csv of the previous column set (no read_tbs, timed_steps, decode_s,
    throughput_tok_s): its cells resume as done (every step was timed), and the first append
    rewrites it in the new layout, its rows' values kept and the new columns blank (timed_steps:
    their gen_tokens)."""
    argv = [*ONE_CELL, "--out", str(tmp_path)]
    assert main(argv) == 0 and len(measured) == 1
    path = schemas.PROFILE.path(tmp_path)
    [old] = _keep_columns(path, PREVIOUS_PROFILE_COLUMNS)
    assert not schemas.PROFILE.is_layout(PREVIOUS_PROFILE_COLUMNS + ["surplus"])
    assert schemas.PROFILE.is_layout(PREVIOUS_PROFILE_COLUMNS)
    assert main([*argv, "--resume"]) == 0 and len(measured) == 1
    assert path.read_text().splitlines()[0].split(",") == PREVIOUS_PROFILE_COLUMNS     # nothing appended yet
    assert main([*argv, "--resume", "--ctx", "64,128"]) == 0 and measured[1:] == [(128, 1)]
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == schemas.PROFILE.names
    first, new = _rows(tmp_path)
    assert {c: first[c] for c in PREVIOUS_PROFILE_COLUMNS} == old
    assert (first["read_tbs"], first["decode_s"], first["throughput_tok_s"], first["timed_steps"]) == ("", "", "", "2")
    assert first["batch_cap"] == new["batch_cap"] == ""                 # no cap outside --throughput
    assert float(new["read_tbs"]) == 1.0 and new["timed_steps"] == "2"


def test_upgrade_takes_any_older_subset_and_refuses_foreign_columns(tmp_path):
    path = schemas.PROFILE.path(tmp_path)
    names = [c for c in schemas.PROFILE.names if c not in ("read_tbs", "mode")]      # two of the later ones
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([names, ["yoco" if c == "arch" else "64" if c == "ctx" else "" for c in names]])
    schemas.PROFILE.upgrade(tmp_path)
    [row] = _rows(tmp_path)
    assert list(row) == schemas.PROFILE.names and row["mode"] == "full" and row["read_tbs"] == ""
    with open(path, "w", newline="") as f:
        csv.writer(f).writerow([*names, "surplus"])
    with pytest.raises(schemas.SchemaError, match="not a profile.csv of this or an older layout"):
        schemas.PROFILE.upgrade(tmp_path)


def test_an_old_csv_without_the_mode_column_resumes_and_is_upgraded(tmp_path, measured):
    """profile.csv files written before the mode column: decode-only rows are those whose note
    starts "decode only"; both kinds resume as done, and the first append rewrites the file in
    the new layout with those values."""
    argv = [*ONE_CELL, "--out", str(tmp_path)]
    assert main(argv) == 0 and main([*argv, "--resume", "--decode-only"]) == 0 and len(measured) == 2
    path = schemas.PROFILE.path(tmp_path)
    _drop_column(path, "mode")
    assert "mode" not in path.read_text().splitlines()[0].split(",")
    assert list(schemas.PROFILE.read(path)["mode"]) == ["full", "decode-only"]
    assert main([*argv, "--resume"]) == 0 and main([*argv, "--resume", "--decode-only"]) == 0
    assert len(measured) == 2
    assert main([*argv, "--resume", "--ctx", "64,128"]) == 0 and measured[2:] == [(128, 1)]
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == schemas.PROFILE.names
    assert [r["mode"] for r in _rows(path.parent)] == ["full", "decode-only", "full"]
    assert (tmp_path / "profile_memory.png").exists()


# -- the ceilings ------------------------------------------------------------------------------
def test_ceilings_count_the_bytes_each_kernel_moves_and_keep_the_fastest_read(monkeypatch):
    """matmul and copy: the median run; the read ceiling: the fastest run of the fastest read
    kernel, counting only the bytes read (a copy counts them twice: read and written)."""
    from yoco_core.perf import hardware

    # matmul, copy, then one list per read kernel (sum, GEMV, decode attention): the GEMV's best wins
    runs = iter([[3.0, 2.0, 1.0], [4.0, 2.0, 3.0], [4.0, 1.0, 3.0], [0.9, 0.5, 2.0], [0.8, 0.7, 0.6]])
    monkeypatch.setattr(hardware, "timed_runs", lambda clock, fn, reps, warm: next(runs))
    nbytes = 1 << 20
    c = hardware.measure_ceilings("cpu", torch.float32, matmul_n=64, copy_bytes=nbytes, reps=3)
    assert c.matmul_tflops == pytest.approx(2 * 64 ** 3 / 2.0 / 1e12)
    assert c.copy_tbs == pytest.approx(2 * nbytes / 3.0 / 1e12)
    assert c.read_tbs == pytest.approx(nbytes / 0.5 / 1e12)
    assert next(runs, None) is None              # every read kernel was timed


@pytest.mark.parametrize("name", ["sum", "gemv", "decode attention"])
def test_each_read_kernel_reads_the_ceiling_buffer_once_and_computes_its_result(name):
    """A decode step reads its weights with GEMVs and its cache with the decode attention kernel:
    the read ceiling times those over the same bytes as the sum, so no step can beat its ceiling."""
    from yoco_core.kernels.decode_attention import decode_attention_ref
    from yoco_core.perf import hardware

    nbytes = 32 << 20
    fn, read = hardware.READERS[name]("cpu", nbytes, torch.Generator().manual_seed(1234))
    assert sum(t.nbytes for t in read if t.nbytes > nbytes // 50) == pytest.approx(nbytes, rel=0.01)   # (a vector, a query aside)
    assert all(bool((t != 0).any()) for t in read)            # random, never all zeros
    got = fn()
    if name == "sum":
        want = read[0].double().sum()
    elif name == "gemv":
        want = read[0].double() @ read[1].double()
    else:
        k, v, q = read
        want = decode_attention_ref(q.double(), k.double(), v.double(), k.shape[2])
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=1e-3)


def test_the_read_ceiling_times_every_read_kernel():
    from yoco_core.perf import hardware

    assert set(hardware.READERS) == {"sum", "gemv", "decode attention"}
    assert hardware._read_seconds(hardware.Clock("cpu"), 1 << 16, torch.Generator().manual_seed(1234), reps=2) > 0


def test_decode_share_is_over_the_read_bandwidth():
    from yoco_core.perf.hardware import Ceilings

    res = sweep.CellResult(status="ok", prefill_s=2.0, decode_ms=1000.0)
    analytic_numbers = {"flops": 4e12, "decode_bytes": 1e12}
    sh = sweep.shares(analytic_numbers, res, Ceilings(matmul_tflops=4.0, copy_tbs=2.0, read_tbs=1.25))
    assert sh == {"prefill_tflops": 2.0, "prefill_share": 0.5, "decode_share": pytest.approx(0.8)}
    assert sweep.shares(analytic_numbers, res, Ceilings(4.0, 2.0))["decode_share"] is None   # no read measured


def test_a_step_that_reads_faster_than_the_read_kernels_raises_the_ceiling(tmp_path, fixed_cell, monkeypatch):
    """The read ceiling is the most the run saw read: a decode step faster than the read kernels
    raises it, for its own row (share 1, the note says from what to what) and every row after it;
    no share exceeds 1, and a row below the ceiling keeps it."""
    from yoco_cli import profile

    measured = 0.0029        # TB/s: above what yoco-tiny's step reads at 64 tokens in the fixed 10 ms, below 1K's
    monkeypatch.setattr(profile, "_ceilings", lambda plan: sweep.Ceilings(1.0, 1.0, measured))
    assert main(["profile", "--arch", "yoco,transformer", "--size", "tiny", "--ctx", "64,1k", "--gen-tokens", "2",
                 "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = {(r["arch"], r["ctx"]): r for r in _rows(tmp_path)}
    assert list(rows) == [("yoco", "64"), ("yoco", "1024"), ("transformer", "64"), ("transformer", "1024")]
    low, fast = rows[("yoco", "64")], rows[("yoco", "1024")]
    assert float(low["read_tbs"]) == measured and 0.9 < float(low["decode_share"]) < 1 and not low["note"]
    rate = float(fast["decode_gb_per_token"]) * GB / 0.01 / 1e12
    assert rate > measured and float(fast["read_tbs"]) == pytest.approx(rate)
    assert float(fast["decode_share"]) == pytest.approx(1.0)
    assert f"read ceiling raised from {measured:.4g} to {rate:.4g} TB/s" in fast["note"]
    after = rows[("transformer", "64")]                         # reads less: the raised ceiling kept
    assert float(after["read_tbs"]) == pytest.approx(rate) and "read ceiling" not in after["note"]
    assert all(float(r["decode_share"]) <= 1 + 1e-9 for r in rows.values())


def test_cold_after_times_a_long_cell_by_its_warm_up(tmp_path, monkeypatch, capsys):
    """Every row times its warm-up prefill too (warmup_prefill_s); with --cold-after S a cell whose
    warm-up prefill took longer than S is prefilled once, that prefill its prefill_s (the note says
    so), and still decoded; a bad --cold-after is one line."""
    calls = []
    real = sweep.build_runner

    def build(*a, **k):
        runner = real(*a, **k)
        prefill = runner.prefill

        def counted(*pa, **pk):
            calls.append(pa[0].shape)
            return prefill(*pa, **pk)

        runner.prefill = counted
        return runner

    monkeypatch.setattr(sweep, "build_runner", build)
    argv = ["profile", "--arch", "yoco", "--size", "tiny", "--ctx", "64", "--gen-tokens", "2", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "warm")]) == 0
    warm_calls = len(calls)
    calls.clear()
    assert main([*argv, "--cold-after", "0", "--out", str(tmp_path / "cold")]) == 0
    assert warm_calls >= 2 and len(calls) == 1
    (w,), (c,) = _rows(tmp_path / "warm"), _rows(tmp_path / "cold")
    assert float(w["warmup_prefill_s"]) > 0 and float(w["prefill_s"]) > 0 and "cold" not in w["note"]
    assert c["status"] == "ok" and c["prefill_s"] == c["warmup_prefill_s"] and float(c["decode_ms"]) > 0
    assert "prefill timed cold: the warm-up's own (" in c["note"] and "over --cold-after 0 s" in c["note"]
    assert main([*argv, "--cold-after", "1e9", "--out", str(tmp_path / "long")]) == 0    # none so long
    assert "cold" not in _rows(tmp_path / "long")[0]["note"]
    capsys.readouterr()
    assert main([*argv, "--cold-after", "-1", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: bad --cold-after -1: must be seconds, at least 0"


# -- the throughput protocol ---------------------------------------------------------------------
@pytest.mark.parametrize("name,ctx", [("yoco-tiny", 64), ("transformer-tiny", 300), ("yoco-3b", 1 << 20)])
def test_largest_batch_is_the_largest_the_estimate_fits(name, ctx):
    cfg = get_config(name)

    def est(b):
        return analytic.estimate_memory(cfg, ctx, b, 2, 8192, 12)["total"]

    for want in (1, 2, 7, 33, 64):
        memory = (est(want) + est(want + 1)) // 2
        assert analytic.largest_batch(cfg, ctx, 2, memory, 8192, 12) == want
        assert analytic.largest_batch(cfg, ctx, 2, est(want), 8192, 12) == want     # exactly full fits
    assert analytic.largest_batch(cfg, ctx, 2, est(1) - 1, 8192, 12) == 0


def test_decode_bytes_over_steps_add_each_steps_cache():
    cfg = get_config("transformer-tiny")
    one = [analytic.decode_bytes(cfg, 100 + i, 3, 4)["total"] for i in range(5)]
    assert analytic.decode_bytes_over(cfg, 100, 3, 4, 5) == sum(one) and one[4] > one[0]


TP_GEN = 3


def _tiny_picks(memory: float) -> dict:
    reserve = sweep.decode_reserve(TP_GEN)
    return {(a, c): analytic.largest_batch(get_config(f"{a}-tiny"), c, 4, int(memory), None, reserve)
            for a in ("yoco", "transformer") for c in (64, 128)}


def test_throughput_picks_the_largest_batch_steps_down_on_oom_and_resumes(tmp_path, measured, monkeypatch):
    """--throughput: per context the largest batch the estimate fits in --memory-gb; the injected
    out-of-memory at yoco 64 x 5 is a row of its own and the batch steps down to 4; the longer
    context starts below it; the rows' throughput is batch x gen-tokens / (prefill + decode); a
    --resume measures nothing; the report shows YOCO over the Transformer per context."""
    y = get_config("yoco-tiny")
    reserve = sweep.decode_reserve(TP_GEN)
    est5, est6 = (analytic.estimate_memory(y, 64, b, 4, None, reserve)["total"] for b in (5, 6))
    memory = (est5 + est6) / 2
    picks = _tiny_picks(memory)
    assert picks[("yoco", 64)] == 5 and picks[("yoco", 128)] < 5 and all(1 < b < 8 for b in picks.values())
    monkeypatch.setenv(sweep.INJECT_ENV, "yoco:64:5")
    argv = ["profile", "--throughput", "--arch", "yoco,transformer", "--size", "tiny", "--ctx", "64,128",
            "--gen-tokens", str(TP_GEN), "--memory-gb", repr(memory / GB), "--device", "cpu", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = _rows(tmp_path)
    want = [("yoco", 64, 5, "oom"), ("yoco", 64, sweep.step_down(5), "ok"), ("yoco", 128, picks[("yoco", 128)], "ok"),
            ("transformer", 64, picks[("transformer", 64)], "ok"),
            ("transformer", 128, picks[("transformer", 128)], "ok")]
    assert [(r["arch"], int(r["ctx"]), int(r["batch"]), r["status"]) for r in rows] == want
    assert measured == [(c, b) for _, c, b, _ in want]
    oom, stepped = rows[0], rows[1]
    assert "injected" in oom["note"] and oom["note"].endswith("next: batch 4") and oom["throughput_tok_s"] == ""
    assert stepped["note"].startswith("batch: stepped down from 5 (out of memory)")
    assert "the largest the estimate fits in the --memory-gb budget" in rows[2]["note"]
    for r in rows[1:]:
        assert (r["mode"], r["gen_tokens"], r["timed_steps"]) == ("throughput", str(TP_GEN), str(TP_GEN))
        assert float(r["est_gb"]) * GB <= memory and float(r["decode_s"]) > 0
        assert float(r["throughput_tok_s"]) == pytest.approx(
            int(r["batch"]) * TP_GEN / (float(r["prefill_s"]) + float(r["decode_s"])))
        assert "extrapolated" not in r["note"]
    assert main([*argv, "--resume"]) == 0 and len(measured) == len(want)

    monkeypatch.delenv(sweep.INJECT_ENV)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    from yoco_cli.reporting import _g

    ran = {(r["arch"], int(r["ctx"])): r for r in rows[1:]}
    for ctx in (64, 128):
        y, t = ran[("yoco", ctx)], ran[("transformer", ctx)]
        ratio = float(y["throughput_tok_s"]) / float(t["throughput_tok_s"])
        assert (f"| tiny | {ctx} | {y['batch']} | {_g(y['throughput_tok_s'])} | "
                f"{t['batch']} | {_g(t['throughput_tok_s'])} | {ratio:.2f}x | n/a |") in md, ctx
    assert f"Every row generated {TP_GEN} tokens per sequence." in md and "ran at its batch cap" not in md
    assert (tmp_path / "report" / "profile_throughput_protocol.png").exists()
    assert not (tmp_path / "report" / "profile_ratios.png").exists()      # a chosen batch is no common batch


@pytest.fixture
def fixed_cell(monkeypatch):
    """measure_cell replaced by fixed timings (prefill 2 s, the timed steps 0.25 s together); the
    ``steps`` it was asked for, in order."""
    from yoco_cli import profile

    monkeypatch.setattr(profile, "_ceilings", lambda plan: sweep.Ceilings(1.0, 1.0, 1.0))
    asked = []

    def fixed(runner, ctx, batch, gen_tokens, chunk_size, repeats=1, seed=0, decode_only=False, steps=None,
              prefills=None, cold_after=None):
        asked.append(steps)
        return sweep.CellResult(status="ok", prefill_s=2.0, decode_ms=10.0, decode_s=0.25, cache_bytes=1)

    monkeypatch.setattr(sweep, "measure_cell", fixed)
    return asked


def test_throughput_arithmetic_and_the_extrapolated_decode(tmp_path, fixed_cell):
    """tokens/s = batch x gen-tokens / (prefill + decode); with --timed-steps N the decode time is
    the N steps' scaled by the analytic bytes of all gen-tokens steps over those of the N (the
    note says so); the two are separate cells of one --out; --batch is the cap, in each row's
    batch_cap, and not part of the cell (a --resume with another cap measures nothing)."""
    argv = ["profile", "--throughput", "--arch", "yoco", "--size", "tiny", "--ctx", "64", "--gen-tokens", "40",
            "--batch", "3", "--device", "cpu", "--out", str(tmp_path)]
    assert main(argv) == 0 and main([*argv, "--resume", "--timed-steps", "10"]) == 0
    assert main([*argv, "--resume", "--timed-steps", "10"]) == 0 and fixed_cell == [40, 10]
    assert main([*argv, "--resume", "--batch", "2"]) == 0 and fixed_cell == [40, 10]
    full, part = _rows(tmp_path)
    assert (full["batch"], full["timed_steps"], part["timed_steps"]) == ("3", "40", "10")
    assert full["batch_cap"] == part["batch_cap"] == "3"
    assert full["note"].startswith("batch: the cap of --batch (the estimate fits ")
    assert float(full["decode_s"]) == pytest.approx(0.25)
    assert float(full["throughput_tok_s"]) == pytest.approx(3 * 40 / 2.25)
    cfg = get_config("yoco-tiny")
    scale = analytic.decode_bytes_over(cfg, 64, 3, 4, 40) / analytic.decode_bytes_over(cfg, 64, 3, 4, 10)
    assert 4.0 < scale < 4.1                                  # later steps read a longer cache
    assert float(part["decode_s"]) == pytest.approx(0.25 * scale)
    assert float(part["throughput_tok_s"]) == pytest.approx(3 * 40 / (2.0 + 0.25 * scale))
    assert f"decode: 10 of 40 steps timed, the time of all 40 extrapolated by the analytic bytes per step " \
           f"(x{scale:.4g})" in part["note"]
    assert float(part["decode_share"]) == pytest.approx(float(part["decode_gb_per_token"]) * GB / 0.01 / 1e12)


def test_the_cpus_default_cap_is_named_as_the_default(tmp_path, fixed_cell):
    """--batch auto on the CPU caps the search at 8: the rows say the default cap did (not --batch),
    batch_cap is 8, and the report marks the batch as capped instead of calling it the largest that fits."""
    assert main(["profile", "--throughput", "--arch", "yoco,transformer", "--size", "tiny", "--ctx", "64",
                 "--gen-tokens", "4", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert [(r["batch"], r["batch_cap"]) for r in rows] == [("8", "8"), ("8", "8")]
    for r in rows:
        assert r["note"].startswith("batch: the default cap of 8 of --batch auto on the CPU (the estimate fits ")
        assert "the cap of --batch" not in r["note"]
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| YOCO capped at 8; Transformer capped at 8 |" in md and "In 1 row(s) a model ran at its batch cap" in md


def test_a_memory_budget_is_kept_however_small():
    """A budget is the budget, not a stand-in for the device's memory (0 bytes is one too)."""
    m = sweep.Machine.of("cpu", 0)
    assert (m.memory, m.budget) == (0, True) and "budget of 0 GB" in m.memory_words()
    assert sweep.Machine.of("cpu").budget is False


def test_throughput_cells_that_cannot_fit_are_skipped_once(tmp_path, fixed_cell):
    """Not even batch 1 within the budget: one skipped row per context, nothing built or timed."""
    assert main(["profile", "--throughput", "--arch", "transformer", "--size", "tiny", "--ctx", "64,128",
                 "--memory-gb", "0.001", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert [(r["ctx"], r["batch"], r["status"]) for r in rows] == [("64", "1", "skipped"), ("128", "1", "skipped")]
    assert "exceeds the --memory-gb budget of 0.001 GB" in rows[0]["note"] and fixed_cell == []


# -- --timed-prefills: the batch prefilled one sequence at a time ----------------------------------
TP1 = ["profile", "--throughput", "--size", "tiny", "--ctx", "512", "--gen-tokens", "8", "--device", "cpu"]


@pytest.fixture
def one_at_a_time(monkeypatch):
    """What a --timed-prefills sweep runs: each prefill's (arch, batch of its ids), and each
    measure_cell's [arch, batch, decode_only, its result (None: it raised)]; the ceilings not measured."""
    from yoco_cli import profile

    monkeypatch.setattr(profile, "_ceilings", lambda plan: sweep.Ceilings(1.0, 1.0, 1.0))
    seen = {"prefill": [], "cell": []}
    real_prefill, real_cell = runners.NativeRunner.prefill, sweep.measure_cell

    def prefill(self, ids, chunk_size, reserve):
        seen["prefill"].append((self.arch, ids.shape[0]))
        return real_prefill(self, ids, chunk_size, reserve)

    def cell(*a, **k):
        seen["cell"].append([a[0].arch, a[2], a[7], None])        # a cell that raises is seen too
        seen["cell"][-1][3] = res = real_cell(*a, **k)
        return res

    monkeypatch.setattr(runners.NativeRunner, "prefill", prefill)
    monkeypatch.setattr(sweep, "measure_cell", cell)
    return seen


def test_timed_prefills_prefill_one_sequence_at_a_time(tmp_path, one_at_a_time):
    """--timed-prefills 1: no prefill of the whole batch, only batch-1 ones (the warm-up and the one
    timed); prefill_s = batch x that prefill's time; the decode the decode-only cell's at the batch
    (its cache the batch's), --timed-steps applying as before; the column, the note and the
    throughput formula."""
    argv = [*TP1, "--arch", "yoco,transformer", "--timed-steps", "2", "--timed-prefills", "1", "--batch", "3",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    assert one_at_a_time["prefill"] == [("yoco", 1)] * 2 + [("transformer", 1)] * 2     # warm-up + 1, never 3
    cells = one_at_a_time["cell"]
    assert [(arch, b, only) for arch, b, only, _ in cells] == [
        ("yoco", 3, True), ("yoco", 1, False), ("transformer", 3, True), ("transformer", 1, False)]
    rows = _rows(tmp_path)
    assert [(r["arch"], r["batch"], r["status"], r["timed_prefills"], r["timed_steps"]) for r in rows] == [
        ("yoco", "3", "ok", "1", "2"), ("transformer", "3", "ok", "1", "2")]
    for r, (_, _, _, decode), (_, _, _, one) in zip(rows, cells[::2], cells[1::2]):
        assert one.decode_s is None and one.prefill_s > 0               # the prefill half decodes nothing
        assert float(r["prefill_s"]) == 3 * one.prefill_s
        assert float(r["decode_ms"]) == decode.decode_ms and decode.prefill_s is None
        cfg = get_config(r["model"])
        reserve = sweep.decode_reserve(8)
        assert float(r["cache_gb"]) * GB == pytest.approx(sum(analytic.cache_bytes(cfg, 512, 3, 4, reserve).values()))
        scale = analytic.decode_bytes_over(cfg, 512, 3, 4, 8) / analytic.decode_bytes_over(cfg, 512, 3, 4, 2)
        assert float(r["decode_s"]) == pytest.approx(decode.decode_s * scale)
        assert float(r["throughput_tok_s"]) == pytest.approx(3 * 8 / (float(r["prefill_s"]) + float(r["decode_s"])))
        assert ("prefill: 1 of 3 sequences prefilled one at a time and timed, the batch's prefill time 3 x their "
                "median; the batch decoded from a cache of random values (as --decode-only)") in r["note"]
        assert "decode: 2 of 8 steps timed" in r["note"] and "peak memory" not in r["note"]    # none on the CPU
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "prefill extrapolated from 1 sequence(s) (at most the batch's) prefilled one at a time" in md
    assert "Every batch was prefilled one sequence at a time, 1 of those prefills timed" in md
    assert "timed cold" not in md


def test_the_throughput_table_says_whose_prefill_was_timed_cold(tmp_path):
    """--cold-after: a row timed by its warm-up says so in its note, and the report's throughput
    table says whose prefill that was (a cold prefill includes one-time builds)."""
    argv = [*TP1, "--arch", "yoco,transformer", "--timed-steps", "2", "--timed-prefills", "1", "--batch", "2"]
    assert main([*argv, "--arch", "transformer", "--cold-after", "0", "--out", str(tmp_path)]) == 0
    assert main([*argv, "--arch", "yoco", "--out", str(tmp_path), "--resume"]) == 0
    t, y = _rows(tmp_path)
    assert "prefill timed cold" in t["note"] and "cold" not in y["note"] and t["prefill_s"] != ""
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Transformer's prefill timed cold (its warm-up: one-time builds included, --cold-after)" in md
    assert "YOCO's prefill timed cold" not in md


@pytest.mark.parametrize("name,ctx,chunk", [("yoco-3b", 32768, 8192), ("transformer-3b", 32768, 65536),
                                            ("yoco-tiny", 512, None)])
def test_the_one_at_a_time_estimate_holds_one_sequences_chunk_beside_the_batchs_cache(name, ctx, chunk):
    """Prefilled one sequence at a time, a batch needs its whole cache but only one sequence's
    prefill chunk (or the batch's decode step, when that is larger), so more sequences fit."""
    cfg = get_config(name)
    c = analytic.effective_chunk(chunk, ctx) or ctx
    for b in (1, 7, 64):
        whole = analytic.estimate_memory(cfg, ctx, b, 2, chunk, 12)
        one = analytic.estimate_memory(cfg, ctx, b, 2, chunk, 12, one_at_a_time=True)
        assert (one["weights"], one["cache"]) == (whole["weights"], whole["cache"])
        assert one["activations"] == max(analytic.activation_bytes(cfg, c, 1, 2),
                                         analytic.activation_bytes(cfg, 1, b, 2))
        assert one["total"] == one["weights"] + one["cache"] + one["activations"]
        assert (one["total"] == whole["total"]) if b == 1 else (one["total"] < whole["total"])
    memory = int(analytic.estimate_memory(cfg, ctx, 8, 2, chunk, 12)["total"])
    fits = analytic.largest_batch(cfg, ctx, 2, memory, chunk, 12, one_at_a_time=True)
    assert fits > analytic.largest_batch(cfg, ctx, 2, memory, chunk, 12) == 8
    assert analytic.estimate_memory(cfg, ctx, fits, 2, chunk, 12, one_at_a_time=True)["total"] <= memory < \
        analytic.estimate_memory(cfg, ctx, fits + 1, 2, chunk, 12, one_at_a_time=True)["total"]


def test_timed_prefills_pick_the_batch_by_the_one_at_a_time_estimate(tmp_path, measured):
    """With --timed-prefills the throughput batch is the largest the one-at-a-time estimate fits in
    --memory-gb (larger than the batched prefill's), the note says which estimate, and est_gb is it."""
    y = get_config("yoco-tiny")
    reserve = sweep.decode_reserve(4)
    memory = analytic.estimate_memory(y, 512, 3, 4, None, reserve)["total"] + 1          # batched: batch 3
    assert analytic.largest_batch(y, 512, 4, memory, None, reserve) == 3
    want = analytic.largest_batch(y, 512, 4, memory, None, reserve, one_at_a_time=True)
    assert want > 3
    argv = ["profile", "--throughput", "--arch", "yoco", "--size", "tiny", "--ctx", "512", "--gen-tokens", "4",
            "--timed-steps", "2", "--timed-prefills", "1", "--batch", "64", "--memory-gb", repr(memory / GB),
            "--device", "cpu", "--dtype", "fp32", "--out", str(tmp_path)]
    assert main(argv) == 0
    (r,) = _rows(tmp_path)
    assert (r["status"], int(r["batch"])) == ("ok", want)
    assert "batch: the largest the estimate (one sequence prefilled at a time) fits in" in r["note"]
    assert float(r["est_gb"]) * GB == pytest.approx(
        analytic.estimate_memory(y, 512, want, 4, None, reserve, one_at_a_time=True)["total"])


def test_one_at_a_time_takes_the_larger_phases_peak_and_stops_at_a_failed_half(monkeypatch):
    """The row's peaks are the larger phase's (the decode's batch cache or the prefill's one
    sequence), said in the note; no more than the batch's sequences are timed; a failed half is the
    cell's result, the prefill's named as such, and a failed decode runs no prefill."""
    plan = sweep.Plan(archs=["yoco"], sizes=["tiny"], ctxs=[64], batches=[], throughput=True, gen_tokens=4,
                      timed_prefills=5)
    cell = sweep.Cell("yoco", "tiny", "yoco-tiny", 2, 64)
    runner = runners.Runner(arch="yoco", config=None, model=None, device=torch.device("cpu"), params=0)
    results, asked = [], []

    def run_cell(runner, ctx, batch, gen_tokens, chunk, repeats=1, seed=0, decode_only=False, steps=None,
                 prefills=None, cold_after=None):
        asked.append((batch, decode_only, steps, prefills))
        return results.pop(0)

    monkeypatch.setattr(sweep, "run_cell", run_cell)
    results[:] = [sweep.CellResult("ok", decode_ms=3.0, decode_s=0.01, peak_alloc=10, peak_reserved=12, cache_bytes=7),
                  sweep.CellResult("ok", prefill_s=0.5, peak_alloc=11, peak_reserved=11, cache_bytes=1)]
    res = sweep._one_at_a_time(plan, runner, cell, 0)
    assert asked == [(2, True, 4, None), (1, False, 0, 2)]             # 2 of the batch's 2, not 5
    assert (res.prefill_s, res.decode_ms, res.cache_bytes, res.peak_alloc, res.peak_reserved) == (1.0, 3.0, 7, 11, 12)
    assert res.note.startswith("prefill: 2 of 2 sequences prefilled one at a time")
    assert "peak memory: the larger phase's (the decode holds the batch's cache, the prefill one sequence's " \
           "activations)" in res.note
    results[:] = [sweep.CellResult("oom", note="CUDA out of memory")]
    assert sweep._one_at_a_time(plan, runner, cell, 0).status == "oom" and len(asked) == 3
    results[:] = [sweep.CellResult("ok", decode_ms=3.0, decode_s=0.01), sweep.CellResult("oom", note="CUDA oom")]
    res = sweep._one_at_a_time(plan, runner, cell, 0)
    assert (res.status, res.note) == ("oom", "prefilling one sequence: CUDA oom")


def test_timed_prefills_are_part_of_the_cell_on_resume(tmp_path, one_at_a_time):
    """Another --timed-prefills (or none) measures the cell anew, the same one skips it; a file
    written before the column resumes as the whole-batch cells it holds, and is upgraded with it blank."""
    argv = [*TP1, "--arch", "yoco", "--batch", "2", "--out", str(tmp_path)]
    cells = one_at_a_time["cell"]
    assert main([*argv, "--timed-prefills", "1"]) == 0 and len(cells) == 2
    assert main([*argv, "--timed-prefills", "1", "--resume"]) == 0 and len(cells) == 2
    assert main([*argv, "--timed-prefills", "2", "--resume"]) == 0 and len(cells) == 4
    assert main([*argv, "--timed-prefills", "2", "--resume"]) == 0 and len(cells) == 4
    assert main([*argv, "--resume"]) == 0 and len(cells) == 5                  # the whole batch, once
    assert [c[1] for c in cells[4:]] == [2]
    assert main([*argv, "--resume", "--timed-prefills", "1"]) == 0 and main([*argv, "--resume"]) == 0
    assert len(cells) == 5
    rows = _rows(tmp_path)
    assert [(r["timed_prefills"], r["batch"]) for r in rows] == [("1", "2"), ("2", "2"), ("", "2")]
    assert "prefilled one at a time" not in rows[2]["note"] and float(rows[2]["prefill_s"]) > 0
    assert one_at_a_time["prefill"][-2:] == [("yoco", 2)] * 2              # the whole batch: warm-up + timed

    old = tmp_path / "old"
    old.mkdir()
    path = schemas.PROFILE.path(old)
    path.write_text(schemas.PROFILE.path(tmp_path).read_text())
    _keep_columns(path, [c for c in schemas.PROFILE.names if c != "timed_prefills"])
    keep = [r for r in _rows(old) if r["note"] and "one at a time" not in r["note"]]     # as an older version wrote it
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(keep[0]))
        w.writeheader()
        w.writerows(keep)
    assert schemas.PROFILE.is_layout(list(keep[0]))
    assert main([*TP1, "--arch", "yoco", "--batch", "2", "--out", str(old), "--resume"]) == 0 and len(cells) == 5
    assert main([*TP1, "--arch", "yoco", "--batch", "2", "--out", str(old), "--resume", "--timed-prefills", "1"]) == 0
    assert len(cells) == 7
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == schemas.PROFILE.names
    assert [r["timed_prefills"] for r in _rows(old)] == ["", "1"]


def test_an_oom_in_the_decode_phase_steps_the_batch_down_before_any_prefill(tmp_path, one_at_a_time, monkeypatch):
    """The injected out-of-memory at the batch's decode (yoco 512 x 3) is an oom row, the batch
    steps down to 2, and only that batch's cell prefills (the failed one spent no prefill)."""
    monkeypatch.setenv(sweep.INJECT_ENV, "yoco:512:3")
    argv = [*TP1, "--arch", "yoco", "--batch", "3", "--timed-prefills", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = _rows(tmp_path)
    assert [(r["batch"], r["status"], r["timed_prefills"]) for r in rows] == [("3", "oom", "1"), ("2", "ok", "1")]
    assert "injected" in rows[0]["note"] and rows[0]["note"].endswith("next: batch 2")
    assert rows[0]["prefill_s"] == rows[0]["throughput_tok_s"] == ""
    assert rows[1]["note"].startswith("batch: stepped down from 3 (out of memory); prefill: 1 of 2 sequences")
    assert [(b, only) for _, b, only, _ in one_at_a_time["cell"]] == [(3, True), (2, True), (1, False)]
    assert one_at_a_time["prefill"] == [("yoco", 1)] * 2
    assert main([*argv, "--resume"]) == 0 and len(one_at_a_time["cell"]) == 3


def test_an_oom_prefilling_one_sequence_ends_the_search(tmp_path, one_at_a_time, monkeypatch):
    """An out-of-memory in the batch-1 prefill (injected at yoco 512 x 1) does not depend on the
    batch: one oom row naming it, no step-down, and a --resume (its blocker at batch 1) measures
    nothing more at that context."""
    monkeypatch.setenv(sweep.INJECT_ENV, "yoco:512:1")
    argv = [*TP1, "--arch", "yoco", "--batch", "3", "--timed-prefills", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = _rows(tmp_path)
    assert [(r["batch"], r["status"]) for r in rows] == [("3", "oom")]
    assert sweep.ONE_SEQUENCE in rows[0]["note"] and "next: batch" not in rows[0]["note"]
    assert [(b, only) for _, b, only, _ in one_at_a_time["cell"]] == [(3, True), (1, False)]
    assert sweep.Blockers.from_rows(rows, "fp32").smallest("yoco-tiny", 512) == 1
    assert main([*argv, "--resume"]) == 0 and len(one_at_a_time["cell"]) == 2 and len(_rows(tmp_path)) == 1


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["--ctx", "4q"], ["--ctx", "0"], ["--ctx", "1.5"], ["--arch", "rnn"], ["--arch", "yoco,mamba"],
    ["--size", "7b"], ["--batch", "x"], ["--batch", "0"], ["--gen-tokens", "0"], ["--device", "tpu"],
    ["--chunk-size", "abc"], ["--self-decoder", "mamba"], ["--dtype", "int8"], ["--repeats", "0"],
    ["--throughput", "--decode-only"], ["--throughput", "--batch", "1,2"], ["--timed-steps", "4"],
    ["--throughput", "--timed-steps", "0"], ["--throughput", "--gen-tokens", "8", "--timed-steps", "9"],
    ["--throughput", "--arch", "yoco,hf"], ["--memory-gb", "0"], ["--memory-gb", "-1"], ["--memory-gb", "nan"],
    ["--memory-gb", "1e-10"], ["--throughput", "--memory-gb", "4e-10"],
    ["--throughput", "--batch", "0"], ["--timed-prefills", "1"], ["--throughput", "--timed-prefills", "0"],
    ["--throughput", "--timed-prefills", "1", "--repeats", "2"],
])
def test_bad_input_is_one_line_exit_2(args, capsys, tmp_path):
    assert main(["profile", "--device", "cpu", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o" / "profile.csv").exists()


def test_missing_peer_package_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "fla", None)        # as if flash-linear-attention were absent
    assert main(["profile", "--arch", "yoco,fla", "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "arch fla needs flash-linear-attention" in err and "\n" not in err
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["profile", "--arch", "hf", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "arch hf needs transformers" in capsys.readouterr().err


def test_cli_exit_code_and_single_line_in_a_real_process(tmp_path):
    p = subprocess.run([sys.executable, "-m", "yoco_cli.main", "profile", "--ctx", "4k,x", "--device", "cpu",
                        "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "bad size 'x'" in p.stderr


# -- the analytic model on converted families' configs -------------------------------------------
# a Qwen3 / Gemma-like shape: head size 32 over dim 64 (queries 128 wide), q/k/v biases, q/k norms,
# two layers of a sliding window of 6 keys between full ones
FAMILY = get_config("transformer-tiny").replace(dim=64, n_heads=4, n_kv_heads=2, ffn_dim=96, n_layers=4,
                                                head_size=32, qkv_bias=True, qk_norm=True,
                                                layer_windows=[0, 6, 6, 0], max_seq_len=512)


def _scored_pairs(T: int, window: int) -> int:
    """(query, key) pairs a causal layer scores, counted off its mask."""
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (k <= q) & ((k > q - window) if window else True)
    return int(allowed.sum())


def test_cost_model_of_a_family_with_its_own_head_size_and_windows():
    """Linear FLOPs against a FLOP counter on the real model (queries n_heads x head_size wide,
    not dim), the attention term against the pairs its masks allow, the cache as allocated
    (every layer's buffer full length) and a decode step reading a windowed layer's last keys only."""
    model = build_model(FAMILY)
    T, B = 40, 2
    ids = torch.randint(0, FAMILY.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        _, cache = model.prefill(ids, reserve=5)
    parts = analytic.prefill_flops(FAMILY, T, B)
    assert counter.get_total_flops() == pytest.approx(parts["linear"] + parts["lm_head"], rel=1e-9)
    pairs = sum(_scored_pairs(T, w) for w in FAMILY.layer_windows)
    assert parts["attention"] == pytest.approx(4 * 4 * 32 * B * pairs)
    assert cache.kv_nbytes() == analytic.cache_bytes(FAMILY, T, B, 4, reserve=5)["kv"] == 4 * 2 * B * (T + 5) * 64 * 4
    kv_row = 2 * B * 2 * 32 * 4                        # keys + values of one position, all KV heads
    assert analytic.decode_bytes(FAMILY, T, B, 4)["cache"] == kv_row * (T + 6 + 6 + T)
    assert analytic.decode_bytes(FAMILY, 4, B, 4)["cache"] == kv_row * 4 * 4     # shorter than the window


def test_a_yoco_of_a_folders_shape_says_what_differs():
    folder = runners.FolderModel("hf:x", Path("x"), "x", "hf", FAMILY.replace(name="hf:x", n_layers=3, layer_windows=None))
    cfg, note = runners.yoco_like_config(folder, "gret")
    assert (cfg.arch, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.vocab_size) == \
        ("yoco", 64, 4, 4, 2, 96, FAMILY.vocab_size)
    assert cfg.name == "yoco-like:x" and note.startswith("random weights of the shape of hf:x")
    assert "4 layers (its 3 rounded up to even)" in note and "head size 16 (its 32" in note
    assert "qkv_bias" in note and "qk_norm" in note
    odd = runners.FolderModel("hf:y", Path("y"), "y", "hf", FAMILY.replace(dim=72, n_heads=8, head_size=32))
    with pytest.raises(runners.FolderError, match="no YOCO has the shape"):
        runners.yoco_like_config(odd, "gret")


# -- -m: a model folder ----------------------------------------------------------------------------
TINY_HF = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=96, vocab_size=320, max_position_embeddings=512)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A tiny random Llama (in a folder named ``tiny``, as a preset size is, to show that its rows
    and the preset's never share a key) and a tiny Qwen2 (q/k/v biases), saved by transformers
    without tokenizer files (profiling feeds random ids); and their parameter counts."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, cls in (("tiny", "Llama"), ("Qwen2-mini", "Qwen2")):
        torch.manual_seed(0)
        model = getattr(transformers, f"{cls}ForCausalLM")(getattr(transformers, f"{cls}Config")(**TINY_HF))
        model.save_pretrained(root / name)
        out[name] = (root / name, sum(p.numel() for p in model.parameters()))
    return out


FOLDER_ARGS = ["--ctx", "64,128", "--gen-tokens", "2", "--device", "cpu"]


@pytest.mark.parametrize("name", ["tiny", "Qwen2-mini"])
def test_profile_a_folder_ours_transformers_and_a_yoco_of_its_shape(name, hf_folders, tmp_path, measured):
    folder, n_params = hf_folders[name]
    argv = ["profile", "-m", f"hf:{folder}", "--arch", "transformer,hf,yoco", *FOLDER_ARGS, "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = _rows(tmp_path)
    got = {(r["arch"], r["model"], r["size"], r["ctx"]): r["status"] for r in rows}
    assert got == {(a, f"{m}:{name}", name, c): "ok" for a, m in (("transformer", "hf"), ("hf", "transformers"),
                                                                  ("yoco", "yoco-like")) for c in ("64", "128")}
    native = runners.read_folder(f"hf:{folder}").config
    yoco, note = runners.FolderModel(f"hf:{folder}", folder, name, "hf", native).config_for("yoco", "gret")
    for r in rows:
        T = int(r["ctx"])
        assert float(r["est_gb"]) > 0 and float(r["decode_ms"]) > 0, r["arch"]
        if r["arch"] == "yoco":
            assert int(r["params"]) == yoco.n_params() and r["note"] == note
            assert "random weights" in note and "4 layers (its 3" in note
            continue
        assert int(r["params"]) == n_params, r["arch"]            # what ran: the folder's own weights
        cache = analytic.cache_bytes(native, T, 1, 4, reserve=0 if r["arch"] == "hf" else sweep.decode_reserve(2))
        assert float(r["cache_gb"]) * GB == pytest.approx(cache["kv"]), r["arch"]   # the native config's cost model
    assert len(measured) == 6
    assert main([*argv, "--resume"]) == 0 and len(measured) == 6          # resumed: nothing measured twice
    if name == "tiny":      # a preset of the same size in the same folder: its own cells
        assert main(["profile", "--arch", "transformer", "--size", "tiny", "--ctx", "64", "--gen-tokens", "2",
                     "--device", "cpu", "--out", str(tmp_path), "--resume"]) == 0
        assert len(measured) == 7 and _rows(tmp_path)[-1]["model"] == "transformer-tiny"


def test_a_preset_as_model_is_the_size_path(tmp_path, measured):
    argv = ["--ctx", "64", "--gen-tokens", "2", "--device", "cpu", "--out", str(tmp_path)]
    assert main(["profile", "--arch", "yoco", "--size", "tiny", "--self-decoder", "swa", *argv]) == 0
    assert main(["profile", "-m", "yoco-swa-tiny", "--resume", *argv]) == 0
    assert len(measured) == 1 and [r["model"] for r in _rows(tmp_path)] == ["yoco-swa-tiny"]


def _write_json(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


@pytest.fixture
def bad_folders(tmp_path):
    gpt2 = _write_json(tmp_path / "gpt2", {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4,
                                           "vocab_size": 320})
    ours, empty = tmp_path / "ours", tmp_path / "empty"
    save_model(build_model(get_config("transformer-tiny").replace(n_layers=2)), ours)
    empty.mkdir()
    return {"gpt2": gpt2, "ours": ours, "empty": empty, "nodir": tmp_path / "missing",
            "theirs": _write_json(tmp_path / "theirs", {"model_type": "llama"})}


@pytest.mark.parametrize("spec,extra,says", [
    ("hf:{tiny}", ["--size", "tiny"], "exclude each other"),
    ("hf:{tiny}", ["--arch", "transformer,fla"], "--arch fla does not run -m folders"),
    ("hf:{nodir}", [], "is not a folder"),
    ("hf:{empty}", [], "no config.json"),
    ("{theirs}", [], "use -m hf:"),
    ("nonsense-7b", [], "neither a preset"),
    ("unilm:{ours}", [], "not unilm:"),
    ("hf:{gpt2}", ["--arch", "transformer"], "runs only on the transformers fallback"),
    ("{ours}", ["--arch", "hf"], "--arch hf runs transformers folders"),
])
def test_model_option_refusals_are_one_line_exit_2(spec, extra, says, hf_folders, bad_folders, tmp_path, capsys):
    paths = {**bad_folders, "tiny": hf_folders["tiny"][0]}
    argv = ["profile", "-m", spec.format(**paths), *extra, "--device", "cpu", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and says in err, err
    assert not (tmp_path / "o" / "profile.csv").exists()


def test_what_auto_runs_on_each_kind_of_folder(bad_folders, hf_folders):
    assert runners.read_folder(f"hf:{hf_folders['tiny'][0]}").default_archs() == ["transformer", "hf"]
    assert runners.read_folder(f"hf:{bad_folders['gpt2']}").default_archs() == ["hf"]
    ours = runners.read_folder(str(bad_folders["ours"]))
    assert ours.default_archs() == ["transformer"] and ours.model_name("transformer") == "ckpt:ours"
    assert runners.read_folder("transformer-tiny") is None


def test_a_folder_only_transformers_runs_is_profiled_as_hf_alone(tmp_path, measured):
    """A model_type our native path does not convert (GPT-2): --arch auto is transformers alone;
    its rows have no cost-model numbers, and say so."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=320, n_positions=256)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "g2")
    assert main(["profile", "-m", f"hf:{tmp_path / 'g2'}", "--ctx", "64", "--gen-tokens", "2", "--device", "cpu",
                 "--out", str(tmp_path / "o")]) == 0
    [row] = _rows(tmp_path / "o")
    assert (row["arch"], row["model"], row["size"], row["status"]) == ("hf", "transformers:g2", "g2", "ok")
    assert row["est_gb"] == row["prefill_tflops"] == "" and "no cost model" in row["note"]
    assert float(row["cache_gb"]) > 0 and int(row["params"]) > 0


def test_one_of_our_checkpoint_folders_runs_past_its_max_seq_len(tmp_path, measured):
    """-m CHECKPOINT: its own weights on our native path; a context past the config's max_seq_len
    still runs (as transformers runs past max_position_embeddings), the note says so."""
    cfg = get_config("transformer-tiny").replace(n_layers=2, max_seq_len=64)
    save_model(build_model(cfg), tmp_path / "short")
    assert main(["profile", "-m", str(tmp_path / "short"), "--ctx", "64", "--gen-tokens", "2", "--device", "cpu",
                 "--out", str(tmp_path / "o")]) == 0
    [row] = _rows(tmp_path / "o")
    assert (row["arch"], row["model"], row["size"], row["status"]) == ("transformer", "ckpt:short", "short", "ok")
    assert int(row["params"]) == cfg.n_params() and "past its config's max_seq_len 64" in row["note"]


# -- --dtype fp8: float8 projections (yoco_core.quant.quantize_fp8) ------------------------------------
def _projection_linears(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear and m is not model.lm_head]


@pytest.mark.parametrize("name", ["yoco-3b", "transformer-3b", "yoco-swa-3b", "yoco-tiny", "transformer-tiny"])
def test_fp8_weights_are_a_byte_per_projection_weight_and_a_scale_per_channel(name):
    """With fp8 the projections (linear_params' token + last) take a byte per weight and 4 bytes
    per output channel, everything else the compute dtype's elem; the cache, the activations and
    the FLOPs are unchanged; the rows counted are the real model's projections' output channels."""
    cfg = get_config(name)
    p = analytic.linear_params(cfg)
    proj = p["token"] + p["last"]
    linears = _projection_linears(build_model(cfg, device="meta"))          # shapes only
    assert sum(m.weight.numel() for m in linears) == proj == analytic.projection_params(cfg)
    scales = 4 * sum(m.out_features for m in linears)
    assert analytic.projection_rows(cfg) * 4 == scales
    emb = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim
    for elem in (2, 4):
        want = (cfg.n_params() - proj) * elem + proj * 1 + scales
        kw = dict(chunk=8192, reserve=12)
        fp8 = analytic.estimate_memory(cfg, 1 << 16, 3, elem, **kw, fp8=True)
        full = analytic.estimate_memory(cfg, 1 << 16, 3, elem, **kw)
        assert fp8["weights"] == analytic.weight_bytes(cfg, elem, fp8=True) == want < full["weights"]
        assert (fp8["cache"], fp8["activations"]) == (full["cache"], full["activations"])
        assert fp8["total"] == fp8["weights"] + fp8["cache"] + fp8["activations"]
        one = analytic.estimate_memory(cfg, 1 << 16, 3, elem, 8192, 12, 1, True, True)       # positional order kept
        assert one["weights"] == want and one["activations"] == analytic.estimate_memory(
            cfg, 1 << 16, 3, elem, 8192, 12, one_at_a_time=True)["activations"]
        dec, dec_full = (analytic.decode_bytes(cfg, 4096, 3, elem, fp8=f) for f in (True, False))
        assert dec["weights"] == want - emb * elem == analytic.weight_bytes_read(cfg, elem, fp8=True)
        assert dec["cache"] == dec_full["cache"] and dec["total"] == dec["weights"] + dec["cache"]
        assert analytic.decode_bytes_over(cfg, 4096, 3, elem, 3, fp8=True) == sum(
            analytic.decode_bytes(cfg, 4096 + i, 3, elem, fp8=True)["total"] for i in range(3))
        cell = analytic.cell_analytics(cfg, 4096, 3, elem, 8192, 12, fp8=True)
        assert cell == {"flops": analytic.prefill_flops(cfg, 4096, 3)["total"], "decode_bytes": dec["total"],
                        "est_bytes": analytic.estimate_memory(cfg, 4096, 3, elem, 8192, 12, fp8=True)["total"]}
        memory = full["total"]
        assert analytic.largest_batch(cfg, 1 << 16, elem, memory, 8192, 12, fp8=True) >= \
            analytic.largest_batch(cfg, 1 << 16, elem, memory, 8192, 12) == 3
    assert analytic.weight_bytes(cfg, 2) == cfg.n_params() * 2              # without fp8: as before


@pytest.mark.parametrize("name", ["yoco-tiny", "yoco-swa-tiny", "transformer-tiny"])
def test_fp8_weight_bytes_are_a_quantized_models_but_its_padding(name):
    """The bytes of a model after quantize_fp8 (parameters and scale buffers) are the analytic
    weight bytes plus the padding the docstring leaves out (output widths off a multiple of 16)."""
    from yoco_core.quant import Float8Linear, quantize_fp8

    cfg = get_config(name)
    model = build_model(cfg)
    pad = sum((-m.out_features % 16) * (m.in_features + 4 + 4 * (m.bias is not None)) for m in _projection_linears(model))
    quantize_fp8(model)
    assert not _projection_linears(model) and any(isinstance(m, Float8Linear) for m in model.modules())
    real = sum(t.nbytes for t in model.parameters()) + sum(t.nbytes for t in model.buffers())
    assert real == analytic.weight_bytes(cfg, 4, fp8=True) + pad
    assert (pad > 0) == (name == "yoco-tiny")          # gRet's fused projection: 4 d + its heads' gates


def test_the_fp8_ceiling_times_scaled_mm_on_float8_operands(monkeypatch):
    """measure_ceilings(fp8=True): the matmul timed is torch._scaled_mm of two e4m3 matrices with
    row-wise scales, the product in the run's dtype, at the same n; copy and read as without."""
    from yoco_core.perf import hardware

    seen, real = [], hardware.timed_runs
    monkeypatch.setattr(hardware, "timed_runs",
                        lambda clock, fn, reps, warm: seen.append(fn()) or real(clock, fn, reps, warm))
    c = hardware.measure_ceilings("cpu", torch.float32, matmul_n=32, copy_bytes=1 << 12, reps=2, fp8=True)
    assert c.matmul_n == 32 and c.matmul_tflops > 0 and c.copy_tbs > 0 and c.read_tbs > 0
    gen = torch.Generator().manual_seed(1234)
    a, b = (torch.randn(32, 32, generator=gen).to(torch.float8_e4m3fn) for _ in range(2))
    assert seen[0].dtype == torch.float32 and torch.allclose(seen[0], a.float() @ b.float().t())
    plain = hardware.measure_ceilings("cpu", torch.float32, matmul_n=32, copy_bytes=1 << 12, reps=2)
    n_first = 2 + len(hardware.READERS)                 # matmul, copy, each read kernel
    assert plain.matmul_n == 32 and len(seen) == 2 * n_first and seen[n_first].dtype == torch.float32
    assert not torch.equal(seen[n_first], seen[0])            # the plain ceiling multiplies the float32 values


def test_fp8_is_profiles_own_dtype():
    """fp8 stays out of the shared dtype table (needle, eval, train refuse it as unknown); its
    rows' spelling passes through canonical unchanged and keys its own blockers."""
    from yoco_cli.options import UserError, resolve_dtype
    from yoco_core.dtypes import canonical

    with pytest.raises(UserError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", "cpu")
    assert canonical("fp8") == "fp8" and canonical("FP8") == "FP8"
    plan = sweep.Plan(archs=["yoco"], sizes=["tiny"], ctxs=[64], batches=[1], fp8=True)
    assert (plan.dtype_name, plan.dtype) == ("fp8", torch.float32)
    rows = [{"status": "oom", "dtype": "fp8", "model": "yoco-tiny", "ctx": 64, "batch": 1}]
    [cell] = plan.cells()
    assert sweep.Blockers.from_rows(rows, "fp8").blocker(cell) == (64, 1)
    assert sweep.Blockers.from_rows(rows, "fp32").blocker(cell) is None


@pytest.fixture
def fp8_built(monkeypatch):
    """The models the sweep builds (kept after their runner is closed), and the measure_ceilings calls."""
    from yoco_core.perf import hardware

    models, ceilings = [], []
    real_build, real_ceilings = sweep.build_runner, hardware.measure_ceilings

    def build(*a, **k):
        runner = real_build(*a, **k)
        models.append((runner.arch, runner.model))
        return runner

    def measure(device, dtype, *a, **k):
        ceilings.append((dtype, k.get("fp8", False)))
        return real_ceilings(device, dtype, *a, **k)

    monkeypatch.setattr(sweep, "build_runner", build)
    monkeypatch.setattr(hardware, "measure_ceilings", measure)
    return models, ceilings


def _float8(model) -> bool:
    """Every projection of ``model`` is a Float8Linear (and there is one)."""
    from yoco_core.quant import Float8Linear

    return not _projection_linears(model) and any(isinstance(m, Float8Linear) for m in model.modules())


FP8_ARGS = ["profile", "--size", "tiny", "--ctx", "256", "--gen-tokens", "4", "--device", "cpu"]


def test_profile_fp8_quantizes_our_models_and_resumes_beside_fp32(tmp_path, fp8_built, capsys):
    """--dtype fp8: yoco and transformer built in fp32 (the CPU's auto), their projections float8;
    the rows say fp8, est_gb and decode bytes are the fp8 cost model's (below fp32's), the ceiling
    line names _scaled_mm; an fp32 run in the same --out measures its own cells, a --resume of
    either measures nothing, and yoco report takes the two dtypes."""
    models, ceilings = fp8_built
    argv = [*FP8_ARGS, "--arch", "yoco,transformer", "--dtype", "fp8", "--out", str(tmp_path)]
    assert main(argv) == 0
    text = capsys.readouterr().err                 # the console's lines go to stderr
    assert "(fp8 _scaled_mm, n=1024)" in text and "fp8 (float8 projections, the rest fp32)" in text
    assert ceilings == [(torch.float32, True)]
    assert [a for a, _ in models] == ["yoco", "transformer"] and all(_float8(m) for _, m in models)
    assert all(next(m.parameters()).device.type == "cpu" for _, m in models)
    reserve = sweep.decode_reserve(4)
    rows = _rows(tmp_path)
    assert [(r["arch"], r["status"], r["dtype"]) for r in rows] == [("yoco", "ok", "fp8"), ("transformer", "ok", "fp8")]
    for r in rows:
        cfg = get_config(r["model"])
        chunk = int(r["chunk_size"]) or None
        assert float(r["est_gb"]) * GB == pytest.approx(
            analytic.estimate_memory(cfg, 256, 1, 4, chunk, reserve, fp8=True)["total"])
        assert float(r["decode_gb_per_token"]) * GB == pytest.approx(
            analytic.decode_bytes(cfg, 256, 1, 4, fp8=True)["total"])
        assert float(r["cache_gb"]) * GB == pytest.approx(sum(analytic.cache_bytes(cfg, 256, 1, 4, reserve).values()))
        assert float(r["matmul_tflops"]) > 0 and float(r["prefill_share"]) > 0 and float(r["decode_ms"]) > 0

    assert main([*argv, "--resume"]) == 0 and len(models) == 2 and len(_rows(tmp_path)) == 2
    assert main([*FP8_ARGS, "--arch", "yoco,transformer", "--out", str(tmp_path), "--resume"]) == 0
    assert len(models) == 4 and not any(_float8(m) for _, m in models[2:])
    assert ceilings[-1] == (torch.float32, False)
    rows = _rows(tmp_path)
    assert [(r["arch"], r["dtype"]) for r in rows] == [("yoco", "fp8"), ("transformer", "fp8"),
                                                       ("yoco", "fp32"), ("transformer", "fp32")]
    for fp8_row, fp32_row in zip(rows[:2], rows[2:]):
        assert float(fp8_row["est_gb"]) < float(fp32_row["est_gb"])
        assert float(fp8_row["decode_gb_per_token"]) < float(fp32_row["decode_gb_per_token"])
        assert fp8_row["cache_gb"] == fp32_row["cache_gb"] and fp8_row["params"] == fp32_row["params"]
    for again in (argv, [*FP8_ARGS, "--arch", "yoco,transformer", "--dtype", "fp32", "--out", str(tmp_path)]):
        assert main([*again, "--resume"]) == 0
    assert len(models) == 4 and len(_rows(tmp_path)) == 4

    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| fp32, fp8 |" in md                            # the runs table: both dtypes
    assert md.count("| fp8 |") == md.count("| fp32 |") == 3     # a headline ratio and two cells each


def test_profile_fp8_quantizes_the_swa_yoco(tmp_path, fp8_built, measured):
    models, _ = fp8_built
    assert main([*FP8_ARGS, "--arch", "yoco", "--self-decoder", "swa", "--dtype", "FP8", "--out", str(tmp_path)]) == 0
    [r] = _rows(tmp_path)
    assert (r["model"], r["status"], r["dtype"]) == ("yoco-swa-tiny", "ok", "fp8")
    assert [a for a, _ in models] == ["yoco"] and _float8(models[0][1])
    cfg = get_config("yoco-swa-tiny")
    assert float(r["est_gb"]) * GB == pytest.approx(
        analytic.estimate_memory(cfg, 256, 1, 4, None, sweep.decode_reserve(4), fp8=True)["total"])


def test_profile_fp8_throughput_one_sequence_at_a_time(tmp_path, fp8_built, measured):
    """--throughput --timed-prefills with fp8: the batch (capped at 2), its one-at-a-time estimate
    and the decode extrapolated by the fp8 bytes per step."""
    models, _ = fp8_built
    argv = ["profile", "--throughput", "--arch", "yoco", "--size", "tiny", "--ctx", "256", "--gen-tokens", "4",
            "--timed-steps", "2", "--timed-prefills", "1", "--batch", "2", "--dtype", "fp8", "--device", "cpu",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    [r] = _rows(tmp_path)
    assert (r["status"], r["batch"], r["dtype"], r["mode"], r["timed_prefills"]) == ("ok", "2", "fp8", "throughput", "1")
    assert _float8(models[0][1]) and measured == [(256, 2), (256, 1)]
    cfg = get_config("yoco-tiny")
    assert float(r["est_gb"]) * GB == pytest.approx(
        analytic.estimate_memory(cfg, 256, 2, 4, None, sweep.decode_reserve(4), one_at_a_time=True, fp8=True)["total"])
    scale = analytic.decode_bytes_over(cfg, 256, 2, 4, 4, fp8=True) / analytic.decode_bytes_over(cfg, 256, 2, 4, 2,
                                                                                                 fp8=True)
    assert f"(x{scale:.4g})" in r["note"] and float(r["throughput_tok_s"]) > 0
    assert main([*argv, "--resume"]) == 0 and len(measured) == 2


@pytest.mark.parametrize("args,says", [
    (["--arch", "hf"], "--dtype fp8 is for our models (arch yoco, transformer), not hf"),
    (["--arch", "yoco,fla"], "--dtype fp8 is for our models (arch yoco, transformer), not fla"),
    (["--arch", "yoco,hf", "--throughput"], "--dtype fp8 is for our models"),
    (["--tp", "2"], "--tp 2: --dtype fp8 does not run tensor parallel yet"),
    (["-m", "{ckpt}"], "--dtype fp8 does not run -m folders yet"),
    (["--dtype", "fp4"], "unknown dtype 'fp4' (use fp32, bf16, fp16, fp8 or auto)"),
])
def test_fp8_refusals_are_one_line_exit_2(args, says, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    if "-m" in args:
        save_model(build_model(get_config("transformer-tiny").replace(n_layers=2)), ckpt)
    argv = ["profile", "--dtype", "fp8", "--ctx", "64", "--device", "cpu", "--out", str(tmp_path / "o"),
            *[a.format(ckpt=ckpt) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and says in err, err
    assert not (tmp_path / "o" / "profile.csv").exists()
