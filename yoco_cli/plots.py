"""Every figure of the toolkit: needle heatmaps, the paper-style profile curves, YOCO/baseline
ratio curves, the throughput protocol against the YOCO paper's, and eval bar charts.

Each function takes a DataFrame as returned by the matching ``Schema.read`` (numbers already
numeric; rows may come from several runs and devices), writes PNG files with matplotlib's Agg
backend and returns the paths it wrote. Nothing is shown on screen. Several runs of the same cell
(e.g. two devices) are drawn as separate series, never averaged together.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import matplotlib.transforms as mtransforms  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from yoco_core.perf.notes import COLD_PREFILL  # noqa: E402

from .options import format_size, slug  # noqa: E402  (slug: plots.slug, file names of figures)

DPI = 120
BASELINES = ("transformer", "hf", "fla")        # what YOCO is compared against, in this order
_MISSED_FOUND = LinearSegmentedColormap.from_list(
    "missed_found", ["#c0392b", "#e67e22", "#f1c40f", "#7dbb42", "#1e8449"]).with_extremes(bad="#d9d9d9")

# (file, column, y label, title)
PROFILE_METRICS = (
    ("profile_memory.png", "peak_alloc_gb", "peak GPU memory allocated (GB)", "Memory vs context"),
    ("profile_prefill.png", "prefill_s", "prefill latency (s)", "Prefill latency vs context"),
    ("profile_throughput.png", "decode_tok_s", "decode throughput (tokens/s)", "Throughput vs context"),
    ("profile_decode_latency.png", "decode_ms", "decode latency per step (ms)",
     "Decode latency vs context"),
)
# The throughput the YOCO paper reports (Sun et al., "You Only Cache Once: Decoder-Decoder
# Architectures for Language Models", arXiv:2405.05254, Fig. 6, on an H100-80GB): YOCO over the
# Transformer by context (in tokens), and the tokens/s of both at 512K. What `yoco profile
# --throughput` measures is set beside it (throughput_rows).
PAPER_THROUGHPUT = {
    "source": "YOCO paper, arXiv:2405.05254, Fig. 6 (H100-80GB)",
    "ratio": {32768: 2.72, 65536: 2.57, 131072: 2.77, 262144: 4.37, 524288: 9.56},
    "tokens_s": {524288: {"yoco": 43.1, "transformer": 4.5}},
}
THROUGHPUT_FIGURE = "profile_throughput_protocol.png"

# (column of ratio_rows, label, baseline / yoco?)
RATIO_METRICS = (
    ("memory_saved", "memory saved (x)"),
    ("prefill_speedup", "prefill speed-up (x)"),
    ("throughput_gain", "throughput gain (x)"),
)


# -- helpers ---------------------------------------------------------------------------------
def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _ctx_label(n) -> str:
    return format_size(int(n))


def _log2_ctx_axis(ax, ctxs) -> None:
    ctxs = sorted({int(c) for c in ctxs if c == c and c > 0})
    ax.set_xscale("log", base=2)
    if ctxs:
        ax.set_xticks(ctxs)
        ax.set_xticklabels([_ctx_label(c) for c in ctxs], rotation=45 if len(ctxs) > 8 else 0)
        ax.minorticks_off()
        lo, hi = ctxs[0], ctxs[-1]
        ax.set_xlim(lo / 1.35, hi * 1.35)
    ax.set_xlabel("context length (tokens)")


def _varying(df: pd.DataFrame, cols) -> list[str]:
    """Those of ``cols`` that take more than one value in ``df`` (so labels name only those)."""
    return [c for c in cols if c in df.columns and df[c].astype(str).nunique(dropna=False) > 1]   # blank a value too


def _last_per(df: pd.DataFrame, cols) -> pd.DataFrame:
    """One row per ``cols`` (the last one written: a re-run replaces an earlier row)."""
    return df.drop_duplicates(subset=list(cols), keep="last")


def model_names(df: pd.DataFrame) -> pd.Series:
    """Each profile row's model (column ``model``: ``yoco-3b``, ``yoco-swa-3b``, ...); ``<arch>-<size>``
    where there is none (frames without the column, a blank cell)."""
    implied = df["arch"].astype(str) + "-" + df["size"].astype(str)
    if "model" not in df.columns:
        return implied
    named = df["model"].notna() & (df["model"].astype(str) != "")
    return df["model"].astype(str).where(named, implied)


def models_to_tell_apart(df: pd.DataFrame, by=("arch", "size"), model: str = "model") -> set[tuple]:
    """The groups of ``by`` (as tuples) that hold more than one model in ``df``: there only the model
    tells their rows apart (a gRet and an SWA YOCO of one size), so tables name it and figures draw
    a line per model. Empty (false) where every group holds one. ``model``: the column naming the
    model (``"model"``: read through ``model_names``; ratio and throughput rows: ``"yoco_model"``,
    blanks not counted)."""
    if df.empty:
        return set()
    names = model_names(df) if model == "model" else df[model]
    n = names.groupby([df[c] for c in by], dropna=False).nunique()
    return {k if isinstance(k, tuple) else (k,) for k, v in n.items() if v > 1}


def per_batch(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a batch given by the user (modes full and decode-only): a throughput row's batch
    was chosen per context, so those rows go to ``throughput_rows`` instead."""
    return df[df["mode"] != "throughput"] if "mode" in df.columns else df


def _plain_log_labels(ax) -> None:
    """Plain numbers (0.1, 20, 5000) on a log y axis; minor ticks labelled when the axis spans
    few decades (all of them under ~1 decade, the 2s and 5s under ~2.5)."""
    lo, hi = ax.get_ylim()
    span = math.log10(hi / lo) if lo > 0 and hi > lo else 10.0
    keep = (2, 3, 4, 5, 6, 7, 8, 9) if span < 1.2 else (2, 5) if span < 2.5 else ()

    def minor(v, _pos=None):
        if v <= 0:
            return ""
        lead = round(v / 10 ** math.floor(math.log10(v) + 1e-9))
        return f"{v:g}" if lead in keep else ""

    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _pos=None: f"{v:g}"))
    ax.yaxis.set_minor_formatter(mticker.FuncFormatter(minor))


def _num(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.nan
    return x


# -- needle ----------------------------------------------------------------------------------
def needle_heatmap(df: pd.DataFrame, path) -> list[Path]:
    """One depth (y) x context (x) heatmap per model; cell = mean score over trials.

    With several models (or tasks/devices/dtypes that differ), the first group goes to ``path``
    and each other one to ``<stem>_<slug><suffix>`` next to it.
    """
    path = Path(path)
    df = df[df["ctx_requested"].notna() & df["depth"].notna() & df["score"].notna()]
    if df.empty:
        return []
    extra = _varying(df, ("task", "device", "dtype"))
    group_cols = ["model", *extra]
    written: list[Path] = []
    for i, (key, g) in enumerate(df.groupby(group_cols, sort=False)):
        key = key if isinstance(key, tuple) else (key,)
        name = " / ".join(str(k) for k in key)
        out = path if i == 0 else path.with_name(f"{path.stem}_{slug('_'.join(map(str, key)))}{path.suffix}")
        written.append(_needle_one(g, name, out))
    return written


def _needle_one(g: pd.DataFrame, name: str, out: Path) -> Path:
    table = g.pivot_table(index="depth", columns="ctx_requested", values="score", aggfunc="mean")
    table = table.sort_index().sort_index(axis=1)
    depths, ctxs = list(table.index), list(table.columns)
    acc = float(g["score"].mean())
    w = min(16, 2.5 + 0.75 * len(ctxs))
    h = min(12, 2.2 + 0.42 * len(depths))
    fig, ax = plt.subplots(figsize=(max(w, 5.5), max(h, 3.4)))
    data = np.ma.masked_invalid(table.to_numpy(dtype=float))
    im = ax.imshow(data, cmap=_MISSED_FOUND, vmin=0.0, vmax=1.0, aspect="auto",
                   interpolation="nearest", origin="upper")
    ax.set_xticks(range(len(ctxs)))
    ax.set_xticklabels([_ctx_label(c) for c in ctxs], rotation=45 if len(ctxs) > 10 else 0)
    ax.set_yticks(range(len(depths)))
    ax.set_yticklabels([f"{d:.2f}".rstrip("0").rstrip(".") if d not in (0, 1) else f"{d:.1f}"
                        for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (0 = start, 1 = end)")
    if len(ctxs) * len(depths) <= 240:
        for (r, c), v in np.ndenumerate(table.to_numpy(dtype=float)):
            if v == v:
                ax.text(c, r, f"{v:.2f}".rstrip("0").rstrip(".") if v not in (0, 1) else f"{v:.0f}",
                        ha="center", va="center", fontsize=7,
                        color="white" if v < 0.25 or v > 0.8 else "black")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label("score (1 = found, 0 = missed)")
    trials = g.groupby(["depth", "ctx_requested"]).size()
    ax.set_title(f"{name}\nneedle accuracy {acc:.1%} ({len(g)} trials, "
                 f"{int(trials.max())} per cell)", fontsize=10)
    return _save(fig, out)


# -- profile ---------------------------------------------------------------------------------
_SERIES = ("arch", "size", "model", "batch")      # what a profile line is, before what varies in the file


def _series_cols(df: pd.DataFrame) -> list[str]:
    """One line per (arch, size, model, batch) and per whatever else varies in the file: the mode
    (full or decode-only cells), the decode steps timed, the device, the dtype."""
    return [*_SERIES, *_varying(df, ("mode", "gen_tokens", "device", "dtype"))]


def _series_label(cols, key, told_apart: set) -> str:
    """``yoco 3b b=1 [H200]``; named by the model (``yoco-swa-3b b=1``) where its (arch, size) holds
    several (``told_apart``, from ``models_to_tell_apart``)."""
    d = dict(zip(cols, key))
    name = d["model"] if (d["arch"], d["size"]) in told_apart else f"{d['arch']} {d['size']}"
    label = f"{name} b={fmt_int(d['batch'])}"
    extra = [str(d[c]) for c in cols[len(_SERIES):]]
    return label + (f" [{', '.join(extra)}]" if extra else "")


def fmt_int(x) -> str:
    """A whole number as one (``16``, not ``16.0``); empty where there is none (NaN, blank)."""
    x = _num(x)
    if x != x:
        return ""
    return str(int(x)) if x == int(x) else f"{x:g}"


def _style_for(i: int, n_devices_idx: int):
    colors = plt.get_cmap("tab10" if i < 10 else "tab20").colors
    markers = ("o", "s", "^", "D", "v", "P")
    styles = ("-", "--", ":", "-.")
    return colors[i % len(colors)], markers[n_devices_idx % len(markers)], styles[n_devices_idx % len(styles)]


def profile_figures(df: pd.DataFrame, out_dir) -> list[Path]:
    """Memory, prefill latency, decode throughput and decode latency against context.

    One line per (arch, size, model, batch) (and device/dtype when the rows hold several), labelled
    by the model where an (arch, size) holds several (``models_to_tell_apart``); only rows with
    status ``ok`` are line points; ``oom``/``skipped`` cells are marked with an x at the top edge of
    the axis.
    """
    out_dir = Path(out_dir)
    df = per_batch(df[df["ctx"].notna()])
    if df.empty:
        return []
    df = df.assign(model=model_names(df))
    told_apart = models_to_tell_apart(df)
    cols = _series_cols(df)
    df = _last_per(df, [*cols, "ctx"])
    n = len(_SERIES)
    devices = (sorted(df[cols[n:]].fillna("").astype(str).agg(" ".join, axis=1).unique()) if len(cols) > n
               else [""])
    written = []
    for fname, col, ylabel, title in PROFILE_METRICS:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        fails_at: dict[float, set[str]] = {}
        any_line = False
        lines = list(dict.fromkeys(map(tuple, df[cols[:n]].astype(str).to_numpy())))
        for key, g in df.groupby(cols, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            dev = " ".join(str(k) for k in key[n:])
            # colour: arch/size/model/batch; marker and dash: device (so two devices of one line pair up)
            color, marker, ls = _style_for(lines.index(tuple(map(str, key[:n]))),
                                           devices.index(dev) if dev in devices else 0)
            any_line |= _plot_series(ax, g.sort_values("ctx"), col, (color, marker, ls),
                                     _series_label(cols, key, told_apart), fails_at)
        _finish_profile_axes(ax, df, col, ylabel, title, fails_at, any_line)
        written.append(_save(fig, out_dir / fname))
    return written


def _plot_series(ax, g: pd.DataFrame, col: str, style, label: str, fails_at: dict) -> bool:
    """One (arch, size, model, batch[, device]) series: its ``ok`` points as a line, its ``oom`` /
    ``skipped`` cells as an x on the top edge (recorded in ``fails_at``); True if a line was drawn."""
    color, marker, ls = style
    ok = g[(g["status"] == "ok") & g[col].notna() & (g[col] > 0)]
    if not ok.empty:
        ax.plot(ok["ctx"], ok[col], marker=marker, linestyle=ls, color=color, label=label,
                markersize=5, linewidth=1.6)
    bad = g[g["status"].isin(("oom", "skipped"))]
    if not bad.empty:
        trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(bad["ctx"], [1.0] * len(bad), linestyle="none", marker="x", color=color,
                markersize=9, markeredgewidth=2.2, transform=trans, clip_on=False,
                label=None if not ok.empty else label)
        for c, s in zip(bad["ctx"], bad["status"]):
            fails_at.setdefault(float(c), set()).add("OOM" if s == "oom" else "skipped")
    return not ok.empty


def _finish_profile_axes(ax, df: pd.DataFrame, col: str, ylabel: str, title: str, fails_at: dict,
                         any_line: bool) -> None:
    """Axes, the OOM / skipped labels over their contexts, the legend."""
    _log2_ctx_axis(ax, df["ctx"])
    if any_line:
        ax.set_yscale("log")
        _plain_log_labels(ax)
    else:
        ax.set_yticks([])
        ran = (df["status"] == "ok").any()
        why = (f"no {col} values (not measured on this device)" if ran
               else "no cell ran (all OOM / skipped / error)")
        ax.text(0.5, 0.5, why, transform=ax.transAxes,
                ha="center", va="center", color="gray")
    trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for c, kinds in fails_at.items():
        ax.text(c, 1.035, "/".join(sorted(kinds)), transform=trans, ha="center", va="bottom",
                fontsize=7, color="#b03a2e")
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=18 if fails_at else 6)
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if fails_at:
        handles.append(Line2D([], [], linestyle="none", marker="x", color="black",
                              markeredgewidth=2))
        labels.append("x at top: OOM / skipped (over memory)")
    ax.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
              frameon=False)


def ratio_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Each YOCO model against each baseline arch (transformer, hf, fla) per (size, batch, ctx,
    device, dtype): one row per YOCO model (``yoco_model``: ``model_names``, e.g. a gRet and an SWA
    one) and baseline; a baseline's row is its arch's last one of the cell, whatever its model.

    memory_saved = baseline peak_alloc_gb / yoco's; prefill_speedup = baseline prefill_s / yoco's;
    throughput_gain = yoco decode_tok_s / baseline's. A ratio is NaN unless both cells are ok;
    ``note`` then says why (e.g. "Transformer OOM" where YOCO ran and the baseline did not).
    """
    cols = ["size", "batch", "ctx", "device", "dtype", "baseline", "yoco_model", "yoco_status", "base_status",
            "memory_saved", "prefill_speedup", "throughput_gain", "note"]
    keys = ["size", "batch", "ctx", "device", "dtype", *(["mode"] if "mode" in df.columns else [])]
    df = per_batch(df[df["ctx"].notna()])
    df = df.assign(model=model_names(df))
    yoco = _last_per(df[df["arch"] == "yoco"], ["model", *keys])
    out = []
    for base in BASELINES:
        b = _last_per(df[df["arch"] == base], keys)
        if b.empty or yoco.empty:
            continue
        m = yoco.merge(b, on=keys, suffixes=("_y", "_b"))
        for r in m.to_dict("records"):
            ys, bs = r["status_y"], r["status_b"]
            both = ys == "ok" and bs == "ok"

            def ratio(num, den):
                num, den = _num(num), _num(den)
                return num / den if both and num > 0 and den > 0 else math.nan

            bname = _BASE_NAMES.get(base, base)
            if both:
                note = ""
            elif ys == "ok":
                note = f"{bname} {status_word(bs)}"
            elif bs == "ok":
                note = f"YOCO {status_word(ys)}"
            else:
                note = f"both {status_word(ys)}" if ys == bs else f"YOCO {status_word(ys)}, {bname} {status_word(bs)}"
            out.append({
                "size": r["size"], "batch": r["batch"], "ctx": r["ctx"], "device": r["device"],
                "dtype": r["dtype"], "baseline": base, "yoco_model": r["model_y"], "yoco_status": ys,
                "base_status": bs,
                "memory_saved": ratio(r["peak_alloc_gb_b"], r["peak_alloc_gb_y"]),
                "prefill_speedup": ratio(r["prefill_s_b"], r["prefill_s_y"]),
                "throughput_gain": ratio(r["decode_tok_s_y"], r["decode_tok_s_b"]),
                "note": note,
            })
    res = pd.DataFrame(out, columns=cols)
    if not res.empty:
        order = {b: i for i, b in enumerate(BASELINES)}
        res = res.assign(_o=res["baseline"].map(order)).sort_values(
            ["_o", "size", "batch", "device", "dtype", "ctx", "yoco_model"], kind="stable").drop(columns="_o")
        res = res.reset_index(drop=True)
    return res


_BASE_NAMES = {"transformer": "Transformer", "hf": "HF", "fla": "FLA"}


def status_word(s) -> str:
    """A cell's status as the tables and notes write it (OOM, skipped (over memory), error,
    missing)."""
    return {"oom": "OOM", "skipped": "skipped (over memory)", "error": "error"}.get(str(s), str(s) or "missing")


def ratio_figures(df: pd.DataFrame, out_dir) -> list[Path]:
    """YOCO / baseline ratio curves (memory saved, prefill speed-up, throughput gain) vs context,
    one line per (baseline, size, YOCO model, batch[, device, dtype]), named by the YOCO model where a
    size has several (``models_to_tell_apart``); file ``out_dir/profile_ratios.png``. Cells where
    YOCO ran and the baseline did not are marked at the top edge ("<baseline> OOM").
    """
    rows = ratio_rows(df)
    if rows.empty:
        return []
    told_apart = models_to_tell_apart(rows, by=("size",), model="yoco_model")
    cols = ["baseline", "size", "yoco_model", "batch", *_varying(rows, ("device", "dtype"))]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    groups = list(rows.groupby(cols, sort=False))
    handles: dict[str, Line2D] = {}
    only_yoco = False
    noted: set = set()
    for i, (key, g) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        d = dict(zip(cols, key))
        name = d["yoco_model"] if (d["size"],) in told_apart else d["size"]
        label = f"vs {d['baseline']}: {name} b={fmt_int(d['batch'])}"
        extra = [str(d[c]) for c in cols[4:]]
        if extra:
            label += f" [{', '.join(extra)}]"
        color, marker, ls = _style_for(i, BASELINES.index(d["baseline"]) if d["baseline"] in BASELINES else 0)
        g = g.sort_values("ctx")
        for ax, (col, ylabel) in zip(axes, RATIO_METRICS):
            ok = g[g[col].notna()]
            if not ok.empty:
                (h,) = ax.plot(ok["ctx"], ok[col], marker=marker, linestyle=ls, color=color,
                               markersize=5, linewidth=1.6, label=label)    # the legend is the figure's
                handles.setdefault(label, h)
            lone = g[(g["yoco_status"] == "ok") & (g["base_status"] != "ok")]
            if not lone.empty:
                trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
                (h,) = ax.plot(lone["ctx"], [1.0] * len(lone), linestyle="none", marker="^",
                               color=color, markersize=8, transform=trans, clip_on=False)
                handles.setdefault(label, h)
                only_yoco = True
                for c, note in zip(lone["ctx"], lone["note"]):
                    if (id(ax), c, note) in noted:
                        continue
                    noted.add((id(ax), c, note))
                    ax.text(c, 1.03, note.replace(" (over memory)", "").replace(" ", "\n", 1),
                            transform=trans, ha="center", va="bottom", fontsize=6.5,
                            color="#b03a2e")
    for ax, (col, ylabel) in zip(axes, RATIO_METRICS):
        _ratio_axes(ax, rows, col, ylabel, only_yoco)
    labels = list(handles)
    hs = list(handles.values())
    if only_yoco:
        hs.append(Line2D([], [], linestyle="none", marker="^", color="black"))
        labels.append("^ at top: YOCO ran, baseline OOM / skipped")
    fig.legend(hs, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(labels) - 1) // 4)))
    fig.suptitle("YOCO over baseline (above 1 = YOCO better)", y=1.04)
    fig.tight_layout()
    return [_save(fig, Path(out_dir) / "profile_ratios.png")]


THROUGHPUT_KEYS = ["size", "ctx", "device", "dtype", "gen_tokens", "timed_steps", "timed_prefills"]


def throughput_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The throughput protocol (mode throughput), YOCO against the Transformer per (size, ctx,
    device, dtype, gen_tokens, timed_steps, timed_prefills): each model's final row of its batch
    search (the last written that is not an out-of-memory at a batch above 1; one row per YOCO
    model, e.g. a gRet and an SWA one), its batch, cap and tokens/s, the ratio (NaN unless both
    ran) and the paper's ratio at that context (NaN where it has none); ``yoco_capped`` /
    ``base_capped``: the batch ran at its ``batch_cap`` (maybe below the largest that fits, so not
    the paper's protocol); ``note`` says why a ratio is missing, which batch its cap limited, where a decode
    time was extrapolated (``timed_steps`` below ``gen_tokens``) and where the prefill time was
    (``timed_prefills``: the batch prefilled one sequence at a time)."""
    cols = [*THROUGHPUT_KEYS, "yoco_model", "yoco_batch", "yoco_cap", "yoco_capped", "yoco_tok_s", "yoco_status",
            "base_batch", "base_cap", "base_capped", "base_tok_s", "base_status", "ratio", "paper_ratio", "note"]
    if "mode" not in df.columns:
        return pd.DataFrame(columns=cols)
    t = df[(df["mode"] == "throughput") & df["ctx"].notna()]
    t = t[(t["status"] != "oom") | (t["batch"] == 1)]
    t = _last_per(t, ["arch", "model", *THROUGHPUT_KEYS])
    yoco, base = t[t["arch"] == "yoco"], _last_per(t[t["arch"] == "transformer"], ["arch", *THROUGHPUT_KEYS])
    out = []
    for r in yoco.merge(base, on=THROUGHPUT_KEYS, how="outer", suffixes=("_y", "_b")).to_dict("records"):
        ys, bs = r.get("status_y"), r.get("status_b")
        ys, bs = (ys if isinstance(ys, str) else "missing"), (bs if isinstance(bs, str) else "missing")
        both = ys == "ok" and bs == "ok"
        ty, tb = _num(r.get("throughput_tok_s_y")), _num(r.get("throughput_tok_s_b"))
        notes = [] if both else [f"YOCO {status_word(ys)}" if ys != "ok" else "",
                                 f"Transformer {status_word(bs)}" if bs != "ok" else ""]
        capped = {k: _capped(st, r.get(f"batch_{k}"), r.get(f"batch_cap_{k}")) for k, st in (("y", ys), ("b", bs))}
        for who, k in (("YOCO", "y"), ("Transformer", "b")):
            if capped[k]:
                notes.append(f"{who} capped at {fmt_int(r[f'batch_cap_{k}'])}")
        if "ok" in (ys, bs) and _num(r["timed_steps"]) < _num(r["gen_tokens"]):
            notes.append(f"decode extrapolated from {fmt_int(r['timed_steps'])} of {fmt_int(r['gen_tokens'])} steps")
        if "ok" in (ys, bs) and fmt_int(r["timed_prefills"]):
            notes.append(f"prefill extrapolated from {fmt_int(r['timed_prefills'])} sequence(s) (at most the batch's) "
                         "prefilled one at a time")
        for who, k in (("YOCO", "y"), ("Transformer", "b")):
            if COLD_PREFILL in str(r.get(f"note_{k}", "")):
                notes.append(f"{who}'s prefill timed cold (its warm-up: one-time builds included, --cold-after)")
        out.append({**{k: r[k] for k in THROUGHPUT_KEYS}, "yoco_model": r.get("model_y"),
                    "yoco_batch": r.get("batch_y"), "yoco_cap": r.get("batch_cap_y"), "yoco_capped": capped["y"],
                    "yoco_tok_s": ty, "yoco_status": ys, "base_batch": r.get("batch_b"),
                    "base_cap": r.get("batch_cap_b"), "base_capped": capped["b"], "base_tok_s": tb, "base_status": bs,
                    "ratio": ty / tb if both and ty > 0 and tb > 0 else math.nan,
                    "paper_ratio": PAPER_THROUGHPUT["ratio"].get(int(r["ctx"]), math.nan),
                    "note": "; ".join(n for n in notes if n)})
    res = pd.DataFrame(out, columns=cols)
    return res.sort_values(["size", "device", "dtype", "gen_tokens", "timed_steps", "timed_prefills", "ctx",
                            "yoco_model"],
                           kind="stable").reset_index(drop=True)


def _capped(status, batch, cap) -> bool:
    """A row that ran at its batch cap (the search tried no larger batch)."""
    batch, cap = _num(batch), _num(cap)
    return status == "ok" and cap == cap and batch >= cap


def several_yoco_models(rows: pd.DataFrame) -> bool:
    """Whether ``throughput_rows`` hold more than one YOCO model of one size and setting (a gRet
    and an SWA one): then only the model tells their rows apart."""
    return bool(models_to_tell_apart(rows, by=[k for k in THROUGHPUT_KEYS if k != "ctx"], model="yoco_model"))


def throughput_figure(df: pd.DataFrame, out_dir) -> list[Path]:
    """The throughput protocol against context (``THROUGHPUT_FIGURE``): left, each model's tokens/s
    (prefill + generation, at its largest batch) with the paper's 512K points; right, YOCO over the
    Transformer beside the paper's ratios; one YOCO line per YOCO model where there are several.
    Nothing without throughput rows."""
    rows = throughput_rows(df)
    if rows.empty:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    group = ["size", *_varying(rows, ("device", "dtype", "gen_tokens", "timed_steps", "timed_prefills"))]
    by_model = several_yoco_models(rows)
    colour = 0
    for key, g in rows.groupby(group, sort=False, dropna=False):     # a blank timed_prefills is a group too
        key = key if isinstance(key, tuple) else (key,)
        label = " ".join(str(k) for k in key)
        g = g.sort_values("ctx")
        base = g.drop_duplicates("ctx")          # the Transformer's row of each context (once per YOCO model)
        ok = base[base["base_tok_s"].notna() & (base["base_tok_s"] > 0)]
        if not ok.empty:
            left.plot(ok["ctx"], ok["base_tok_s"], marker="s", linestyle="--", color=_style_for(colour, 0)[0],
                      label=f"transformer {label}")
        for model, m in (g.groupby("yoco_model", sort=False, dropna=True) if by_model else [("yoco", g)]):
            name = f"{model} {label}" if by_model else label
            ok = m[m["yoco_tok_s"].notna() & (m["yoco_tok_s"] > 0)]
            if not ok.empty:
                left.plot(ok["ctx"], ok["yoco_tok_s"], marker="o", linestyle="-", color=_style_for(colour, 0)[0],
                          label=name if by_model else f"yoco {label}")
            ok = m[m["ratio"].notna()]
            if not ok.empty:
                right.plot(ok["ctx"], ok["ratio"], marker="o", color=_style_for(colour, 0)[0],
                           label=f"measured {name}")
            colour += 1
    paper = PAPER_THROUGHPUT
    for ctx, both in paper["tokens_s"].items():
        for arch, marker in (("yoco", "*"), ("transformer", "P")):
            left.plot([ctx], [both[arch]], linestyle="none", marker=marker, markersize=11, color="black",
                      label=f"paper: {arch} at {_ctx_label(ctx)}")
    pc = sorted(paper["ratio"])
    right.plot(pc, [paper["ratio"][c] for c in pc], marker="*", markersize=10, color="black", linestyle=":",
               label=paper["source"])
    ctxs = [*rows["ctx"], *pc]
    for ax, ylabel, title in ((left, "tokens/s (batch x generated / (prefill + decode))",
                               "Throughput at the largest batch that fits (or the cap)"),
                              (right, "YOCO / Transformer throughput (x)", "YOCO over the Transformer")):
        _log2_ctx_axis(ax, ctxs)
        ax.set_yscale("log")
        _plain_log_labels(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    right.axhline(1.0, color="gray", linewidth=1, linestyle="--")
    fig.tight_layout()
    return [_save(fig, Path(out_dir) / THROUGHPUT_FIGURE)]


def _ratio_axes(ax, rows: pd.DataFrame, col: str, ylabel: str, only_yoco: bool) -> None:
    """One ratio panel's axes: log2 ratios around the 1x line, its title and grid."""
    _log2_ctx_axis(ax, rows["ctx"])
    vals = rows[col].dropna()
    if not vals.empty:
        ax.set_yscale("log", base=2)
        lo, hi = min(vals.min(), 1.0), max(vals.max(), 1.0)
        ax.set_ylim(lo / 1.3, hi * 1.3)
        ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.axhline(1.0, color="gray", linewidth=1, linestyle="--")
    ax.set_ylabel(ylabel)
    ax.set_title(f"YOCO {ylabel.split(' (')[0]}", pad=30 if only_yoco else 6)
    ax.grid(True, which="major", alpha=0.3)


# -- eval ------------------------------------------------------------------------------------
def eval_bars(df: pd.DataFrame, path) -> list[Path]:
    """Grouped bars: one group per task/metric, one bar per model (per model and device when a
    model ran on several devices), with stderr error bars where lm-eval gives one."""
    df = df[df["value"].notna()]
    if df.empty:
        return []
    series_cols = ["model", *(["device"] if df.groupby("model")["device"].nunique().max() > 1 else [])]
    df = _last_per(df, ["task", "metric", *series_cols])
    groups = list(dict.fromkeys(zip(df["task"], df["metric"])))
    series = list(dict.fromkeys(map(tuple, df[series_cols].astype(str).to_numpy())))
    n, k = len(groups), len(series)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(min(22, max(6.0, 1.0 + n * (0.45 + 0.28 * k))), 4.8))
    x = np.arange(n)
    for j, s in enumerate(series):
        sel = df[(df[series_cols].astype(str) == list(s)).all(axis=1)]
        look = {(t, m): (v, e) for t, m, v, e in zip(sel["task"], sel["metric"], sel["value"], sel["stderr"])}
        vals = np.array([look.get(gk, (np.nan, np.nan))[0] for gk in groups], dtype=float)
        errs = np.array([look.get(gk, (np.nan, np.nan))[1] for gk in groups], dtype=float)
        pos = x - 0.4 + width * (j + 0.5)
        has_err = np.isfinite(errs)
        bars = ax.bar(pos, np.nan_to_num(vals), width * 0.92, label=" @ ".join(s),
                      color=plt.get_cmap("tab10").colors[j % 10])
        if has_err.any():
            ax.errorbar(pos[has_err], vals[has_err], yerr=errs[has_err], fmt="none", ecolor="black",
                        elinewidth=1, capsize=3)
        if n * k <= 40:
            for b, v, e in zip(bars, vals, errs):
                if v == v:
                    ax.text(b.get_x() + b.get_width() / 2, v + (e if e == e else 0), f"{v:.3g}",
                            ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{t}\n{m}" for t, m in groups], rotation=30 if n > 6 else 0,
                       ha="right" if n > 6 else "center", fontsize=8)
    ax.set_ylabel("metric value")
    ax.set_title("Evaluation (lm-eval)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return [_save(fig, Path(path))]
