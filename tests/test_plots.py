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
                               torch="2.13.0", triton="3.4.0", date=DATE, gen_tokens=32,
                               chunk_size=0, note="" if status == "ok" else "CUDA out of memory")
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
                            decode_share=0.7, matmul_tflops=750.0, copy_tbs=2.9)
                    schemas.PROFILE.append_row(folder, row)
    schemas.write_command(folder, "yoco profile --sizes 3b --ctx 64k --out " + str(folder))
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
