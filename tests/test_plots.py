"""yoco_cli.plots on small schema-conformant sweeps: every figure is written and is a real PNG.

The sweep builders below are also used by test_report.py: rows go through ``Schema.append_row``
and are read back with ``Schema.read``, so the column types are the ones the toolkit writes.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from yoco_cli import plots, schemas

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATE = "2025-01-02T03:04:05Z"


def write_profile(folder, devices=("NVIDIA H100 80GB HBM3",), ctxs=(1024, 4096, 16384, 65536),
                  sizes=("3b",), archs=("yoco", "transformer"), oom_from=65536, batch=1):
    """A tiny profile sweep: YOCO memory grows slowly, the Transformer's fast; the Transformer is
    OOM from ``oom_from`` tokens on; a second device is 1.5x slower."""
    for d, dev in enumerate(devices):
        slow = 1.0 + 0.5 * d
        for size in sizes:
            for arch in archs:
                for ctx in ctxs:
                    base = arch != "yoco"
                    status = "oom" if base and ctx >= oom_from else "ok"
                    row = dict(arch=arch, model=f"{arch}-{size}", size=size, params=3_000_000_000,
                               ctx=ctx, batch=batch, status=status, device=dev, dtype="bf16",
                               torch="2.13.0", triton="3.4.0", date=DATE, gen_tokens=32, timed_steps=32,
                               mode="full", chunk_size=0, note="" if status == "ok" else "CUDA out of memory")
                    if status == "ok":
                        k = ctx / 1024
                        row.update(
                            prefill_s=slow * (0.02 * k * (k if base else 1) ** 0.3 + 0.01),
                            decode_ms=slow * (20 + (0.8 if base else 0.05) * k),
                            decode_tok_s=batch * 1000 / (slow * (20 + (0.8 if base else 0.05) * k)),
                            peak_alloc_gb=6 + (0.4 if base else 0.03) * k,
                            peak_reserved_gb=7 + (0.4 if base else 0.03) * k,
                            cache_gb=(0.4 if base else 0.03) * k, est_gb=6.5 + (0.4 if base else 0.03) * k,
                            prefill_tflops=300.0, prefill_share=0.4, decode_gb_per_token=6.1,
                            decode_share=0.7, matmul_tflops=750.0, copy_tbs=2.9, read_tbs=3.2)
                    schemas.PROFILE.append_row(folder, row)
    schemas.write_command(folder, "yoco profile --sizes 3b --ctx 64k --out " + str(folder))
    return schemas.PROFILE.path(folder)


# (arch, ctx, batch, status, tokens/s) of a throughput sweep: the batches each search tried, in order
THROUGHPUT = (("yoco", 32768, 140, "oom", None), ("yoco", 32768, 117, "ok", 1684.0),
              ("yoco", 524288, 44, "ok", 108.0), ("yoco", 1 << 20, 26, "ok", 53.8),
              ("transformer", 32768, 24, "ok", 695.0), ("transformer", 524288, 2, "ok", 10.8),
              ("transformer", 1 << 20, 1, "oom", None))


def write_throughput(folder, device="NVIDIA H200", rows=THROUGHPUT, timed=64, cap=None, note=None, prefills=None):
    """A --throughput sweep of the 3B models (decode timed over ``timed`` of 1024 steps; ``cap``: every
    row's batch_cap; ``note``: every row's note instead of the sweep's; ``prefills``: every row's
    timed_prefills; a row's sixth item: its model, else ``<arch>-3b``)."""
    for arch, ctx, batch, status, tok_s, *model in rows:
        row = dict(arch=arch, model=model[0] if model else f"{arch}-3b", size="3b", params=3_000_000_000, ctx=ctx,
                   batch=batch, batch_cap=cap, status=status, mode="throughput", gen_tokens=1024, timed_steps=timed,
                   timed_prefills=prefills,
                   chunk_size=8192, device=device, dtype="bf16", torch="2.11.0", triton="3.6.0", date=DATE,
                   note=note if note is not None else "CUDA out of memory" if status == "oom" else
                   f"decode: {timed} of 1024 steps timed, the time of all 1024 extrapolated (x16.2)")
        if status == "ok":
            row.update(prefill_s=batch * 0.2, decode_ms=30.0, decode_tok_s=batch / 0.03, decode_s=batch * 1024 / tok_s
                       - batch * 0.2, throughput_tok_s=tok_s, peak_alloc_gb=120.0, cache_gb=20.0, est_gb=130.0)
        schemas.PROFILE.append_row(folder, row)
    schemas.write_command(folder, "yoco profile --throughput --size 3b --ctx 32k,512k,1m --out " + str(folder))
    return schemas.PROFILE.path(folder)


def write_needle(folder, models=("yoco-3b", "transformer-3b"), ctxs=(1024, 4096, 16384),
                 depths=(0.0, 0.5, 1.0), trials=2, device="NVIDIA H100 80GB HBM3"):
    for model in models:
        for ctx in ctxs:
            for depth in depths:
                for t in range(trials):
                    found = model.startswith("yoco") or ctx <= 4096 or (depth == 1.0 and t == 0)
                    schemas.NEEDLE.append_row(folder, dict(
                        model=model, arch=model.split("-")[0], task="single", ctx_requested=ctx,
                        ctx_tokens=ctx - 3, depth=depth, n_needles=1, trial=t, seed=t,
                        expected="7321", prediction="7321" if found else "1111",
                        score=1.0 if found else 0.0, prefill_seconds=0.01 * ctx / 1024,
                        device=device, dtype="bf16", date=DATE))
    schemas.write_command(folder, "yoco needle --ctx 16k --out " + str(folder))
    return schemas.NEEDLE.path(folder)


def write_eval(folder, models=("yoco-3b", "transformer-3b"), device="NVIDIA H100 80GB HBM3"):
    for j, model in enumerate(models):
        for task, metric, value, stderr in (("arc_easy", "acc", 0.71, 0.009), ("arc_easy", "acc_norm", 0.68, 0.01),
                                            ("hellaswag", "acc_norm", 0.55, ""), ("piqa", "acc", 0.76, 0.01)):
            schemas.EVAL.append_row(folder, dict(
                task=task, metric=metric, value=value - 0.02 * j, stderr=stderr, model=model,
                num_fewshot=0, limit=100, device=device, date=DATE))
    schemas.write_command(folder, "yoco eval --tasks arc_easy,hellaswag,piqa --out " + str(folder))
    return schemas.EVAL.path(folder)


def assert_png(path: Path, min_bytes: int = 5000) -> None:
    path = Path(path)
    assert path.exists(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # not a blank canvas: a real figure has many distinct colours
    assert len(np.unique(img[::3, ::3, :3].reshape(-1, 3), axis=0)) > 20


def test_needle_heatmap_per_model(tmp_path):
    df = schemas.NEEDLE.read(write_needle(tmp_path / "run"))
    out = tmp_path / "fig" / "needle.png"
    paths = plots.needle_heatmap(df, out)
    assert paths == [out, tmp_path / "fig" / "needle_transformer-3b.png"]
    for p in paths:
        assert_png(p)


def test_needle_heatmap_cells_are_means():
    """The heatmap's cell value is the mean score over trials (checked on the drawn image data)."""
    import pandas as pd

    df = pd.DataFrame(dict(model=["m"] * 4, task="single", device="cpu", dtype="fp32",
                           ctx_requested=[1024, 1024, 4096, 4096], depth=[0.5] * 4,
                           score=[1.0, 0.0, 1.0, 1.0]))
    import matplotlib.pyplot as plt

    captured = {}
    orig = plots._save

    def grab(fig, path):
        captured["data"] = fig.axes[0].images[0].get_array()
        captured["title"] = fig.axes[0].get_title()
        return orig(fig, path)

    plots._save = grab
    try:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            plots.needle_heatmap(df, Path(d) / "n.png")
    finally:
        plots._save = orig
        plt.close("all")
    np.testing.assert_allclose(np.asarray(captured["data"]), [[0.5, 1.0]])
    assert "75.0%" in captured["title"]


def test_profile_and_ratio_figures_two_devices(tmp_path):
    run = tmp_path / "run"
    write_profile(run, devices=("NVIDIA H100 80GB HBM3", "NVIDIA H200"))
    df = schemas.PROFILE.read(schemas.PROFILE.path(run))
    paths = plots.profile_figures(df, tmp_path / "fig")
    assert sorted(p.name for p in paths) == sorted(f for f, *_ in plots.PROFILE_METRICS)
    for p in paths:
        assert_png(p)
    (ratio,) = plots.ratio_figures(df, tmp_path / "fig")
    assert ratio.name == "profile_ratios.png"
    assert_png(ratio)


def test_ratio_rows_values_and_oom():
    import pandas as pd

    rows = []
    for arch, mem, pre, tok, status in (("yoco", 2.0, 1.0, 40.0, "ok"), ("transformer", 8.0, 3.0, 10.0, "ok"),
                                        ("hf", 16.0, 4.0, 5.0, "ok")):
        rows.append(dict(arch=arch, size="3b", batch=1, ctx=4096, device="H100", dtype="bf16",
                         status=status, peak_alloc_gb=mem, prefill_s=pre, decode_tok_s=tok))
    rows.append(dict(arch="yoco", size="3b", batch=1, ctx=1 << 20, device="H100", dtype="bf16",
                     status="ok", peak_alloc_gb=9.0, prefill_s=50.0, decode_tok_s=30.0))
    rows.append(dict(arch="transformer", size="3b", batch=1, ctx=1 << 20, device="H100", dtype="bf16",
                     status="oom", peak_alloc_gb=float("nan"), prefill_s=float("nan"),
                     decode_tok_s=float("nan")))
    r = plots.ratio_rows(pd.DataFrame(rows))
    t = r[(r.baseline == "transformer") & (r.ctx == 4096)].iloc[0]
    assert (t.memory_saved, t.prefill_speedup, t.throughput_gain) == (4.0, 3.0, 4.0)
    h = r[r.baseline == "hf"].iloc[0]
    assert (h.memory_saved, h.prefill_speedup, h.throughput_gain) == (8.0, 4.0, 8.0)
    o = r[(r.baseline == "transformer") & (r.ctx == 1 << 20)].iloc[0]
    assert np.isnan(o.memory_saved) and o.note == "Transformer OOM"
    assert set(r.yoco_model) == {"yoco-3b"}         # no model column: the model is arch-size


# (model, peak_alloc_gb, prefill_s, decode_tok_s) of two YOCO models of one size and a Transformer;
# the SWA rows come after the gRet ones (so a row kept per arch would be the SWA one)
TWO_YOCO = (("yoco-3b", 2.0, 1.0, 40.0), ("yoco-swa-3b", 4.0, 2.0, 20.0), ("transformer-3b", 8.0, 4.0, 10.0))


def two_yoco_rows(models=TWO_YOCO, ctxs=(4096, 65536)):
    """Profile rows (dicts) of ``models`` at ``ctxs``, batch 1, full mode, one device."""
    return [dict(arch=m.split("-")[0], model=m, size="3b", params=3_000_000_000, batch=1, ctx=ctx, mode="full",
                 device="NVIDIA H200", dtype="bf16", status="ok", peak_alloc_gb=mem, prefill_s=pre,
                 decode_tok_s=tok, decode_ms=1000.0 / tok, gen_tokens=32, timed_steps=32)
            for ctx in ctxs for m, mem, pre, tok in models]


def test_ratio_rows_one_set_per_yoco_model():
    """A gRet and an SWA YOCO of one size: each against the Transformer on its own, at each context."""
    import pandas as pd

    r = plots.ratio_rows(pd.DataFrame(two_yoco_rows()))
    assert list(zip(r.ctx, r.yoco_model)) == [(4096, "yoco-3b"), (4096, "yoco-swa-3b"),
                                              (65536, "yoco-3b"), (65536, "yoco-swa-3b")]
    assert (r.baseline == "transformer").all() and (r.note == "").all()
    assert list(r.memory_saved) == [4.0, 2.0, 4.0, 2.0]
    assert list(r.prefill_speedup) == [4.0, 2.0, 4.0, 2.0]
    assert list(r.throughput_gain) == [4.0, 2.0, 4.0, 2.0]
    assert plots.models_to_tell_apart(r, by=("size",), model="yoco_model") == {("3b",)}
    one = plots.ratio_rows(pd.DataFrame(two_yoco_rows(TWO_YOCO[::2])))
    assert list(one.yoco_model) == ["yoco-3b", "yoco-3b"] and list(one.memory_saved) == [4.0, 4.0]
    assert not plots.models_to_tell_apart(one, by=("size",), model="yoco_model")


def _drawn(monkeypatch):
    """{figure file: {axes index: {line label: y values}}} of the figures plots draws from now on."""
    drawn = {}
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.update({Path(path).name: {
        i: {ln.get_label(): [float(y) for y in ln.get_ydata()] for ln in ax.get_lines()
            if not ln.get_label().startswith("_")} for i, ax in enumerate(fig.axes)}}) or real(fig, path))
    return drawn


def test_profile_and_ratio_figures_draw_each_yoco_model(tmp_path, monkeypatch):
    """Two YOCO models of one size: a profile line and a ratio line each, named by the model; one
    YOCO model: the labels as ever (arch and size)."""
    import pandas as pd

    drawn = _drawn(monkeypatch)
    df = pd.DataFrame(two_yoco_rows())
    plots.profile_figures(df, tmp_path / "two")
    plots.ratio_figures(df, tmp_path / "two")
    assert drawn["profile_memory.png"][0] == {"transformer 3b b=1": [8.0, 8.0], "yoco-3b b=1": [2.0, 2.0],
                                              "yoco-swa-3b b=1": [4.0, 4.0]}
    assert drawn["profile_ratios.png"][0] == {"vs transformer: yoco-3b b=1": [4.0, 4.0],
                                              "vs transformer: yoco-swa-3b b=1": [2.0, 2.0]}
    one = pd.DataFrame(two_yoco_rows(TWO_YOCO[::2])).drop(columns=["model"])     # an older frame: no model
    plots.profile_figures(one, tmp_path / "one")
    plots.ratio_figures(one, tmp_path / "one")
    assert drawn["profile_memory.png"][0] == {"transformer 3b b=1": [8.0, 8.0], "yoco 3b b=1": [2.0, 2.0]}
    assert drawn["profile_ratios.png"][0] == {"vs transformer: 3b b=1": [4.0, 4.0]}


def test_profile_all_oom_still_draws(tmp_path):
    run = tmp_path / "run"
    write_profile(run, archs=("transformer",), oom_from=0, ctxs=(1024, 2048))
    df = schemas.PROFILE.read(schemas.PROFILE.path(run))
    for p in plots.profile_figures(df, tmp_path / "fig"):
        assert_png(p, min_bytes=2000)
    assert plots.ratio_figures(df, tmp_path / "fig") == []


def test_eval_bars(tmp_path):
    df = schemas.EVAL.read(write_eval(tmp_path / "run"))
    out = tmp_path / "fig" / "eval.png"
    assert plots.eval_bars(df, out) == [out]
    assert_png(out)


def test_empty_frames_write_nothing(tmp_path):
    import pandas as pd

    for schema, fn in ((schemas.NEEDLE, plots.needle_heatmap), (schemas.EVAL, plots.eval_bars)):
        df = pd.DataFrame(columns=schema.names)
        assert fn(df, tmp_path / "x.png") == []
    df = pd.DataFrame(columns=schemas.PROFILE.names)
    assert plots.profile_figures(df, tmp_path) == [] and plots.ratio_figures(df, tmp_path) == []
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["meta-llama/Llama 3.2", "yoco-3b"])
def test_slug_is_file_safe(name):
    s = plots.slug(name)
    assert s and "/" not in s and " " not in s


def test_throughput_rows_pair_each_contexts_final_rows_with_the_paper(tmp_path):
    """Each arch's last batch tried (not the out-of-memory attempts above it), YOCO over the
    Transformer, the paper's ratio where it has one; the per-batch figures leave these rows out."""
    df = schemas.PROFILE.read(write_throughput(tmp_path / "run"))
    r = plots.throughput_rows(df).set_index("ctx")
    assert list(r.index) == [32768, 524288, 1 << 20]
    assert (r.loc[32768, "yoco_batch"], r.loc[32768, "base_batch"]) == (117, 24)
    assert r.loc[32768, "ratio"] == pytest.approx(1684 / 695) and r.loc[32768, "paper_ratio"] == 2.72
    assert r.loc[524288, "ratio"] == pytest.approx(10.0) and r.loc[524288, "paper_ratio"] == 9.56
    assert np.isnan(r.loc[1 << 20, "ratio"]) and np.isnan(r.loc[1 << 20, "paper_ratio"])
    assert r.loc[1 << 20, "note"] == "Transformer OOM; decode extrapolated from 64 of 1024 steps"
    assert r.loc[32768, "note"] == "decode extrapolated from 64 of 1024 steps"
    (fig,) = plots.throughput_figure(df, tmp_path / "fig")
    assert fig.name == plots.THROUGHPUT_FIGURE
    assert_png(fig)
    assert plots.profile_figures(df, tmp_path / "fig") == [] and plots.ratio_figures(df, tmp_path / "fig") == []
    assert plots.throughput_figure(schemas.PROFILE.read(write_profile(tmp_path / "other")), tmp_path / "f2") == []


def test_throughput_rows_say_which_batch_its_cap_limited(tmp_path):
    """A batch at its row's batch_cap ran at the cap, maybe below the largest that fits: the note
    says so per model (the Transformer's batches under the cap are not marked); no cap, no mark."""
    df = schemas.PROFILE.read(write_throughput(tmp_path / "capped", cap=16, rows=(
        ("yoco", 32768, 16, "ok", 400.0), ("transformer", 32768, 16, "ok", 300.0),
        ("yoco", 524288, 16, "ok", 40.0), ("transformer", 524288, 2, "ok", 10.0))))
    r = plots.throughput_rows(df).set_index("ctx")
    assert list(r["yoco_capped"]) == [True, True] and list(r["base_capped"]) == [True, False]
    assert r.loc[32768, "note"].startswith("YOCO capped at 16; Transformer capped at 16; decode extrapolated")
    assert r.loc[524288, "note"].startswith("YOCO capped at 16; decode extrapolated")
    free = plots.throughput_rows(schemas.PROFILE.read(write_throughput(tmp_path / "free")))
    assert not free["yoco_capped"].any() and not free["note"].str.contains("capped").any()


def test_extrapolation_is_read_from_the_step_columns_not_the_note(tmp_path):
    """timed_steps below gen_tokens is an extrapolated decode, whatever the notes say."""
    rows = (("yoco", 32768, 117, "ok", 1684.0), ("transformer", 32768, 24, "ok", 695.0))
    quiet = plots.throughput_rows(schemas.PROFILE.read(write_throughput(tmp_path / "a", rows=rows, note="")))
    assert list(quiet["note"]) == ["decode extrapolated from 64 of 1024 steps"]
    said = plots.throughput_rows(schemas.PROFILE.read(
        write_throughput(tmp_path / "b", rows=rows, timed=1024, note="remark: nothing extrapolated")))
    assert list(said["note"]) == [""]


def test_throughput_rows_keep_one_sequence_prefills_a_setting_of_their_own(tmp_path, monkeypatch):
    """Rows of --timed-prefills and of whole-batch prefills at one context: a pair each (never a
    YOCO of one against a Transformer of the other), the former's note saying how its prefill was
    timed; the figure draws each setting."""
    folder = tmp_path / "run"
    write_throughput(folder, rows=(("yoco", 32768, 117, "ok", 1684.0), ("transformer", 32768, 24, "ok", 695.0)))
    write_throughput(folder, rows=(("yoco", 32768, 117, "ok", 1500.0), ("transformer", 32768, 24, "ok", 500.0)),
                     prefills=1)
    df = schemas.PROFILE.read(schemas.PROFILE.path(folder))
    r = plots.throughput_rows(df)
    assert len(r) == 2 and not plots.several_yoco_models(r)
    [whole], [one] = r[r["timed_prefills"].isna()].to_dict("records"), r[r["timed_prefills"] == 1].to_dict("records")
    assert (whole["ratio"], one["ratio"]) == (pytest.approx(1684 / 695), pytest.approx(3.0))
    assert "prefill" not in whole["note"]
    assert one["note"].endswith("; prefill extrapolated from 1 sequence(s) (at most the batch's) prefilled one at a time")
    drawn = {}
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.update(
        {i: sorted(ln.get_label() for ln in ax.get_lines()) for i, ax in enumerate(fig.axes)}) or real(fig, path))
    plots.throughput_figure(df, tmp_path / "fig")
    assert len([lab for lab in drawn[1] if lab.startswith("measured")]) == 2


def test_the_throughput_figure_draws_each_yoco_model(tmp_path, monkeypatch):
    """A gRet and an SWA YOCO at the same contexts: one line each (left and right), the Transformer's once."""
    rows = tuple((a, c, 8, "ok", t, m) for c in (32768, 65536) for a, m, t in (
        ("yoco", "yoco-3b", 100.0), ("yoco", "yoco-swa-3b", 120.0), ("transformer", "transformer-3b", 50.0)))
    df = schemas.PROFILE.read(write_throughput(tmp_path / "run", rows=rows))
    r = plots.throughput_rows(df)
    assert plots.several_yoco_models(r) and not plots.several_yoco_models(r[r["yoco_model"] == "yoco-3b"])
    drawn = {}
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.update(
        {i: {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()} for i, ax in enumerate(fig.axes)})
        or real(fig, path))
    plots.throughput_figure(df, tmp_path / "fig")
    assert drawn[0]["yoco-3b 3b"] == [100.0, 100.0] and drawn[0]["yoco-swa-3b 3b"] == [120.0, 120.0]
    assert drawn[0]["transformer 3b"] == [50.0, 50.0]
    assert drawn[1]["measured yoco-3b 3b"] == [2.0, 2.0] and drawn[1]["measured yoco-swa-3b 3b"] == [2.4, 2.4]


def test_one_status_word_and_whole_number_everywhere():
    assert [plots.status_word(s) for s in ("oom", "skipped", "error", "")] == [
        "OOM", "skipped (over memory)", "error", "missing"]
    assert [plots.fmt_int(x) for x in (16, 16.0, "16", float("nan"), None, "", 2.5)] == [
        "16", "16", "16", "", "", "", "2.5"]
