"""What `yoco report` builds (``build``): figures, ``report.md`` and a self-contained
``report.html`` from one or more results folders. A module of its own, apart from the command
(``report.py``), so that no other command's start imports pandas and matplotlib.

Every ``profile.csv``, ``needle.csv`` and ``eval.csv`` under the given folders (searched
recursively) is validated against its schema (``schemas.py``); a foreign or damaged file is
refused with a one-line error. The figures come from ``plots.py``; the tables hold the headline
YOCO / baseline ratios, needle accuracy per length, eval scores, and the device, versions, dates
and ``yoco`` commands (``commands.txt``) of each folder. The same cell measured by several runs
(e.g. two devices) stays as separate rows and lines, never averaged. Shares of the hardware are
shown against the ceilings measured in the same run: decode against the read bandwidth
(``read_tbs``; rows of runs that measured none have no share). The throughput protocol
(``yoco profile --throughput``) gets its own table and figure, beside the YOCO paper's ratios
(``plots.PAPER_THROUGHPUT``).
"""
from __future__ import annotations

import base64
import fnmatch
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import plots, schemas
from .options import fail, format_size

KINDS = (schemas.PROFILE, schemas.NEEDLE, schemas.EVAL)
_OUR_FIGURES = ("profile_*.png", "needle*.png", "eval.png")


# -- reading ---------------------------------------------------------------------------------
@dataclass
class Run:
    """One results folder: the CSVs found in it and the commands that wrote them."""
    folder: Path
    label: str
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)   # schema name -> rows
    commands: list[tuple[str, str]] = field(default_factory=list)   # (UTC time, command line)


def find_csvs(dirs: list[Path]) -> list[Path]:
    """Every profile/needle/eval CSV under ``dirs`` (a CSV may also be named directly)."""
    names = {s.name for s in KINDS}
    found: dict[Path, None] = {}
    for d in dirs:
        if not d.exists():
            fail(f"{d}: no such folder")
        if d.is_file():
            if d.name not in names:
                fail(f"{d}: not a results folder or one of {', '.join(sorted(names))}")
            found[d.resolve()] = None
            continue
        for root, subdirs, files in os.walk(d):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
            for f in sorted(files):
                if f in names:
                    found[(Path(root) / f).resolve()] = None
    return list(found)


def read_csv(path: Path) -> pd.DataFrame:
    schema = schemas.SCHEMAS[path.name]
    try:
        df = schema.read(path)
    except schemas.SchemaError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{path}: cannot read ({e.strerror or type(e).__name__})")
    return df[schema.names].copy()


def _label(folder: Path, dirs: list[Path]) -> str:
    """A short, stable name for a results folder: relative to the folder given that holds it."""
    for d in dirs:
        d = d.resolve() if d.is_dir() else d.resolve().parent
        try:
            rel = folder.relative_to(d)
        except ValueError:
            continue
        return str(rel) if str(rel) != "." else d.name
    return str(folder)


def read_commands(folder: Path) -> list[tuple[str, str]]:
    path = folder / "commands.txt"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.strip():
            when, _, cmd = line.partition("\t")
            out.append((when.strip(), cmd.strip()) if cmd else ("", when.strip()))
    return out


def check_out(out: Path) -> None:
    """The report never writes into a results folder (it would replace the figures its command
    drew, which ``yoco profile`` and ``yoco report`` name alike, and mix with its files)."""
    held = [s.name for s in KINDS if s.path(out).is_file()]
    if held:
        fail(f"--out {out}: holds {held[0]}, a results folder the report would write over; "
             f"choose a folder of its own (e.g. {out / 'report'})")


def load_runs(dirs: list[Path], out: Path) -> list[Run]:
    """The results folders under ``dirs``, every CSV validated; ``out`` must not be one (``check_out``)."""
    check_out(out)
    csvs = find_csvs(dirs)
    if not csvs:
        fail(f"no {', '.join(s.name for s in KINDS)} found under {', '.join(map(str, dirs))}")
    runs: dict[Path, Run] = {}
    for path in csvs:
        folder = path.parent
        run = runs.get(folder)
        if run is None:
            run = runs[folder] = Run(folder, _label(folder, dirs), commands=read_commands(folder))
        run.frames[path.name] = read_csv(path)
    labels = [r.label for r in runs.values()]
    for r in runs.values():            # two folders with the same short name: use full paths
        if labels.count(r.label) > 1:
            r.label = str(r.folder)
    return list(runs.values())


def layout_in_device(df: pd.DataFrame) -> pd.DataFrame:
    """profile rows of several processes (``parallel``, e.g. tp2) with their layout in the device
    name (``H200 tp2``), so that the figures and tables, which keep devices apart, never draw them
    in one series with the one-process rows; other rows, and other schemas, as they are."""
    if "parallel" not in df.columns or df.empty:
        return df
    layout = df["parallel"].fillna("").astype(str)
    if not layout.astype(bool).any():
        return df
    df = df.copy()
    df["device"] = df["device"].astype(str) + layout.map(lambda p: f" {p}" if p else "")
    return df


def combine(runs: list[Run], schema: schemas.Schema) -> pd.DataFrame:
    """All runs' rows of one schema, with a ``run`` column. Where two runs measured the same cell
    on the same device, the device is relabelled ``device (run)`` so the plots and tables keep
    both side by side instead of one replacing the other."""
    frames = [r.frames[schema.name].assign(run=r.label) for r in runs if schema.name in r.frames]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=[*schema.names, "run"])
    df = layout_in_device(pd.concat(frames, ignore_index=True))
    keyed = df[list(schema.key)].astype(object).fillna("").astype(str).agg("\x1f".join, axis=1)   # blank ints: NaN
    runs_per = df.assign(_k=keyed).groupby(["device", "_k"])["run"].nunique()
    shared = {dev for (dev, _), n in runs_per.items() if n > 1}
    if shared and df["run"].nunique() > 1:
        # every row of such a device (not only the clashing cells) so that pairs stay paired
        sel = df["device"].isin(shared)
        df.loc[sel, "device"] = df.loc[sel, "device"].astype(str) + " (" + df.loc[sel, "run"] + ")"
    return df


# -- tables ----------------------------------------------------------------------------------
def _x(v) -> str:
    return f"{v:.2f}x" if isinstance(v, float) and v == v else ""


def _g(v, digits=3) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if v != v:
        return ""
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"


def ratio_table(profile: pd.DataFrame) -> pd.DataFrame:
    """The headline ratios (``plots.ratio_rows``), one row per baseline, YOCO model and cell; the
    YOCO model named only where a size has several (``plots.models_to_tell_apart``)."""
    rows = plots.ratio_rows(profile)
    if rows.empty:
        return rows
    rows = rows.sort_values(["baseline", "size", "batch", "ctx", "yoco_model", "device", "dtype"], kind="stable",
                            key=lambda c: c.map({b: i for i, b in enumerate(plots.BASELINES)})
                            if c.name == "baseline" else c)
    out = []
    for r in rows.to_dict("records"):
        def cell(v):
            return _x(v) if v == v else (r["note"] or "n/a")

        out.append({
            "YOCO vs": r["baseline"], "size": r["size"], "YOCO model": r["yoco_model"], "batch": _g(r["batch"]),
            "context": format_size(int(r["ctx"])), "device": r["device"], "dtype": r["dtype"],
            "memory saved": cell(r["memory_saved"]), "prefill speed-up": cell(r["prefill_speedup"]),
            "throughput gain": cell(r["throughput_gain"]),
        })
    df = pd.DataFrame(out)
    if not plots.models_to_tell_apart(rows, by=("size",), model="yoco_model"):
        df = df.drop(columns=["YOCO model"])
    return _drop_constant(df, ("dtype",))


def read_share(row: dict) -> str:
    """A row's decode share of the read bandwidth, to 3 digits (a share of 1.02 is not "1"); empty
    where its run measured no read bandwidth (its ``decode_share`` is then over the copy bandwidth,
    another definition)."""
    read = pd.to_numeric(row.get("read_tbs"), errors="coerce")
    return _g(row["decode_share"], 3) if pd.notna(read) and read > 0 else ""


def batch_table(profile: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, model, size, context, device, dtype) measured at several batch sizes: the highest
    decode throughput, the batch that gave it, its share of the read bandwidth, and the largest
    batch that fitted; plus, on each baseline's row, YOCO's best over the baseline's best at the
    same context: each YOCO model's best on its own (``yoco-3b 6.25x; yoco-swa-3b 5.00x`` where a
    size has several YOCO models, never the best of their rows pooled). A ``model`` column where
    an (arch, size) holds several models (``plots.models_to_tell_apart``)."""
    profile = plots.per_batch(profile)
    profile = profile.assign(model=plots.model_names(profile))
    told_apart = plots.models_to_tell_apart(profile)
    ok = profile[profile["status"] == "ok"]
    keys = ["arch", "model", "size", "ctx", "device", "dtype"]
    if ok.empty or not (ok.groupby(keys)["batch"].nunique() > 1).any():
        return pd.DataFrame()
    multi = ok.groupby(keys).filter(lambda g: g["batch"].nunique() > 1)
    best = multi.loc[multi.groupby(keys)["decode_tok_s"].idxmax()]
    largest = multi.groupby(keys)["batch"].max()
    out = []
    best = best.sort_values(["size", "ctx", "arch", "model"], kind="stable")
    for r in best.to_dict("records"):
        k = tuple(r[c] for c in keys)
        gain = ""
        if r["arch"] != "yoco":
            y = best[(best["arch"] == "yoco") & (best["size"] == r["size"]) & (best["ctx"] == r["ctx"])
                     & (best["device"] == r["device"]) & (best["dtype"] == r["dtype"])]
            named = ("yoco", r["size"]) in told_apart
            gain = "; ".join(f"{m} {g}" if named else g for m, g in zip(
                y["model"], (_x(float(t) / float(r["decode_tok_s"])) for t in y["decode_tok_s"])))
        out.append({"arch": r["arch"], "model": r["model"], "size": r["size"], "context": format_size(int(r["ctx"])),
                    "device": r["device"], "dtype": r["dtype"], "best tok/s": _g(r["decode_tok_s"]),
                    "at batch": _g(r["batch"]), "share of read bandwidth": read_share(r),
                    "largest batch run": _g(largest[k]), "YOCO's best over this": gain})
    df = pd.DataFrame(out)
    if not told_apart:
        df = df.drop(columns=["model"])
    return _drop_constant(df, ("dtype", "device"))


def throughput_table(profile: pd.DataFrame) -> pd.DataFrame:
    """The throughput protocol per context: each model's batch and tokens/s, YOCO / Transformer,
    and the paper's ratio at that context (``plots.throughput_rows``); the YOCO model where one
    size has several (gRet and SWA), the setting (device, dtype, tokens generated, steps timed,
    prefills timed) where it varies (``throughput_words`` says it otherwise), the note where there
    is one."""
    rows = plots.throughput_rows(profile)
    out = []
    for r in rows.to_dict("records"):
        out.append({"size": r["size"], "YOCO model": r["yoco_model"] if isinstance(r["yoco_model"], str) else "",
                    "context": format_size(int(r["ctx"])), "device": r["device"], "dtype": r["dtype"],
                    "generated": plots.fmt_int(r["gen_tokens"]), "timed steps": plots.fmt_int(r["timed_steps"]),
                    "timed prefills": plots.fmt_int(r["timed_prefills"]),
                    "YOCO batch": plots.fmt_int(r["yoco_batch"]) if r["yoco_status"] == "ok" else "",
                    "YOCO tok/s": _tok_s(r["yoco_tok_s"], r["yoco_status"]),
                    "Transformer batch": plots.fmt_int(r["base_batch"]) if r["base_status"] == "ok" else "",
                    "Transformer tok/s": _tok_s(r["base_tok_s"], r["base_status"]),
                    "YOCO / Transformer": _x(r["ratio"]), "paper": _x(r["paper_ratio"]) or "n/a",
                    "note": r["note"]})
    df = pd.DataFrame(out)
    if df.empty:
        return df
    if not plots.several_yoco_models(rows):
        df = df.drop(columns=["YOCO model"])
    df = _drop_constant(df, ("device", "dtype", "generated", "timed steps", "timed prefills"))
    return df.drop(columns=["note"]) if not df["note"].astype(bool).any() else df


def throughput_words(profile: pd.DataFrame, table: pd.DataFrame) -> str:
    """The paragraph above the throughput table: the protocol, the tokens generated, steps timed and
    prefills timed where the table dropped them as constant, and how many rows ran at their batch cap."""
    rows = plots.throughput_rows(profile)
    words = ("The throughput protocol of the YOCO paper (`yoco profile --throughput`): per context each model at "
             "the largest batch the estimate fits (or the --batch cap), prefilled, then the tokens generated; "
             "tokens/s = batch x generated / (prefill + decode time), counting the generated tokens only. YOCO / "
             "Transformer beside the paper's ratio (" + plots.PAPER_THROUGHPUT["source"] + ").")
    if "generated" not in table.columns:
        gen, timed = plots.fmt_int(rows["gen_tokens"].iloc[0]), plots.fmt_int(rows["timed_steps"].iloc[0])
        words += f" Every row generated {gen} tokens per sequence"
        words += (f", {timed} of the decode steps timed and the rest's time extrapolated from them."
                  if "timed steps" not in table.columns and gen != timed else ".")
    prefills = plots.fmt_int(rows["timed_prefills"].iloc[0])
    if "timed prefills" not in table.columns and prefills:
        words += (f" Every batch was prefilled one sequence at a time, {prefills} of those prefills timed (at most "
                  "the batch's), the batch's prefill time its size x their median.")
    capped = int((rows["yoco_capped"] | rows["base_capped"]).sum())
    if capped:
        words += (f" In {capped} row(s) a model ran at its batch cap (\"capped at\" in the note), which may be "
                  "below the largest batch that fits: not the paper's protocol.")
    return words


def _tok_s(v, status) -> str:
    """A tokens/s cell: the number, or the status of a row that has none (OOM, ...)."""
    return _g(v) if v == v else plots.status_word(status)


def _drop_constant(df: pd.DataFrame, cols) -> pd.DataFrame:
    drop = [c for c in cols if c in df.columns and df[c].astype(str).nunique() <= 1]
    return df.drop(columns=drop)


def profile_table(profile: pd.DataFrame) -> pd.DataFrame:
    """Every profile row; a ``model`` column where an (arch, size) holds several models
    (``plots.models_to_tell_apart``), each model's rows together."""
    if profile.empty:
        return pd.DataFrame()
    df = profile.assign(model=plots.model_names(profile))
    df = df.sort_values(["size", "batch", "arch", "model", "ctx", "device"], kind="stable")
    out = pd.DataFrame({
        "arch": df["arch"], "model": df["model"], "size": df["size"], "mode": df["mode"], "batch": df["batch"].map(_g),
        "context": df["ctx"].map(lambda c: format_size(int(c)) if c == c else ""),
        "device": df["device"], "dtype": df["dtype"], "status": df["status"],
        "prefill (s)": df["prefill_s"].map(_g), "decode (ms/step)": df["decode_ms"].map(_g),
        "throughput (tok/s)": df["decode_tok_s"].map(_g),
        "prefill + generation (tok/s)": df["throughput_tok_s"].map(_g),
        "peak mem (GB)": df["peak_alloc_gb"].map(_g),
        "cache (GB)": df["cache_gb"].map(_g), "note": df["note"].astype(str).str.slice(0, 60),
    })
    if not plots.models_to_tell_apart(profile):
        out = out.drop(columns=["model"])
    return _drop_constant(out, ("mode", "dtype", "note", "prefill + generation (tok/s)"))


def needle_table(needle: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (mean score) per model and context length, and over all lengths."""
    if needle.empty:
        return pd.DataFrame()
    rows_by = ["model", *[c for c in ("task", "device", "dtype") if needle[c].astype(str).nunique() > 1]]
    acc = needle.pivot_table(index=rows_by, columns="ctx_requested", values="score", aggfunc="mean")
    acc = acc.sort_index(axis=1)
    overall = needle.groupby(rows_by)["score"].mean()
    trials = needle.groupby(rows_by).size()
    order = list(dict.fromkeys(map(tuple, needle[rows_by].astype(str).to_numpy())))
    out = []
    for key in acc.index:
        k = key if isinstance(key, tuple) else (key,)
        row = dict(zip(rows_by, k))
        for c in acc.columns:
            v = acc.loc[key, c]
            row[format_size(int(c))] = f"{v:.0%}" if v == v else ""
        row["all lengths"] = f"{overall.loc[key]:.1%}"
        row["trials"] = str(int(trials.loc[key]))
        out.append((order.index(tuple(map(str, k))) if tuple(map(str, k)) in order else 0, row))
    return pd.DataFrame([r for _, r in sorted(out, key=lambda t: t[0])])


def eval_table(ev: pd.DataFrame) -> pd.DataFrame:
    if ev.empty:
        return pd.DataFrame()
    df = pd.DataFrame({
        "task": ev["task"], "metric": ev["metric"], "value": ev["value"].map(lambda v: _g(v, 4)),
        "stderr": ev["stderr"].map(lambda v: _g(v, 2)), "model": ev["model"],
        "few-shot": ev["num_fewshot"].map(_g), "limit": ev["limit"].map(_g), "device": ev["device"],
    })
    return df


def runs_table(runs: list[Run]) -> pd.DataFrame:
    out = []
    for r in runs:
        for name, df in sorted(r.frames.items()):
            dates = sorted(d for d in df["date"].astype(str) if d)
            versions = []
            for col in ("torch", "triton"):
                if col in df.columns:
                    vals = sorted({v for v in df[col].astype(str) if v})
                    if vals:
                        versions.append(f"{col} {', '.join(vals)}")
            out.append({
                "folder": r.label, "file": name, "rows": str(len(df)),
                "device": ", ".join(sorted({v for v in df["device"].astype(str) if v})) or "n/a",
                "dtype": ", ".join(sorted({v for v in df["dtype"].astype(str) if v})) if "dtype" in df else "",
                "versions": "; ".join(versions),
                "dates (UTC)": (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}") if dates else "",
            })
    return pd.DataFrame(out)


# -- document model --------------------------------------------------------------------------
@dataclass
class Block:
    kind: str          # "h2", "h3", "p", "table", "img", "code"
    content: object
    extra: str = ""    # image alt text / table caption


def _md_cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: list[Block]) -> str:
    lines = [f"# {title}", ""]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            lines += [("## " if b.kind == "h2" else "### ") + str(b.content), ""]
        elif b.kind == "p":
            lines += [str(b.content), ""]
        elif b.kind == "code":
            lines += ["```", *b.content, "```", ""]
        elif b.kind == "img":
            lines += [f"![{b.extra}]({Path(b.content).name})", ""]
        elif b.kind == "table":
            df: pd.DataFrame = b.content
            if b.extra:
                lines += [f"*{b.extra}*", ""]
            lines.append("| " + " | ".join(_md_cell(c) for c in df.columns) + " |")
            lines.append("|" + "|".join("---" for _ in df.columns) + "|")
            for row in df.itertuples(index=False):
                lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
            lines.append("")
    return "\n".join(lines)


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1.5em;color:#1f2328;line-height:1.45}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.86em;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.3em .65em;text-align:left;white-space:nowrap}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fbfbfc}td.oom{color:#b03a2e;font-weight:600}td.win{color:#1a7f37;font-weight:600}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#57606a}pre{background:#f6f8fa;padding:.7em;overflow-x:auto;font-size:.85em}
.caption{font-size:.9em;color:#57606a;margin-bottom:.2em}
"""


def _td(v) -> str:
    s = str(v)
    cls = ' class="num"' if _NUMERIC.match(s) else ""
    if "OOM" in s or "skipped" in s or "error" in s:
        cls = ' class="oom"'
    elif s.endswith("x"):
        try:
            cls = ' class="num win"' if float(s[:-1]) > 1 else cls
        except ValueError:
            pass
    return f"<td{cls}>{html.escape(s)}</td>"


_NUMERIC = re.compile(r"^[-+]?[\d,]*\.?\d+(e[-+]?\d+)?[x%]?$|^\d+(\.\d+)?[km]$")


def to_html(title: str, blocks: list[Block]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            parts.append(f"<{b.kind}>{html.escape(str(b.content))}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline_code(str(b.content))}</p>")
        elif b.kind == "code":
            parts.append("<pre><code>" + html.escape("\n".join(b.content)) + "</code></pre>")
        elif b.kind == "img":
            data = base64.b64encode(Path(b.content).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(b.extra)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(b.extra)}</figcaption></figure>")
        elif b.kind == "table":
            df: pd.DataFrame = b.content
            if b.extra:
                parts.append(f'<div class="caption">{html.escape(b.extra)}</div>')
            parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
                         + "</tr></thead><tbody>")
            for row in df.itertuples(index=False):
                parts.append("<tr>" + "".join(_td(v) for v in row) + "</tr>")
            parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _inline_code(text: str) -> str:
    """``code`` spans of the Markdown paragraphs as <code> (everything else escaped)."""
    bits = text.split("`")
    return "".join(f"<code>{html.escape(b)}</code>" if i % 2 else html.escape(b) for i, b in enumerate(bits))


# -- the command -----------------------------------------------------------------------------
def build(dirs: list[Path], out: Path, generated_by: str) -> dict[str, object]:
    """Read, plot and write; returns what was written (paths and table sizes), for tests."""
    runs = load_runs(dirs, out)
    profile, needle, ev = (combine(runs, s) for s in KINDS)

    out.mkdir(parents=True, exist_ok=True)
    for old in earlier_figures(out):     # a re-run with fewer models or sizes leaves none stale
        old.unlink(missing_ok=True)

    blocks = _overview(runs, (profile, needle, ev), generated_by)
    figures: list[Path] = []
    tables: dict[str, pd.DataFrame] = {}
    blocks += _headline(profile, needle, tables)
    if not profile.empty:
        blocks += _profile_section(profile, out, figures, tables)
    if not needle.empty:
        blocks.append(Block("h2", "Needle in a haystack"))
        written = plots.needle_heatmap(needle, out / "needle.png")
        for p in written:
            blocks.append(Block("img", p, f"Needle heatmap ({p.name}): depth x context, mean score per cell"))
        figures += written
    if not ev.empty:
        blocks.append(Block("h2", "Evaluation"))
        written = plots.eval_bars(ev, out / "eval.png")
        for p in written:
            blocks.append(Block("img", p, "Eval metrics per task"))
        figures += written
        tables["eval"] = eval_table(ev)
        blocks.append(Block("table", tables["eval"], "lm-eval results"))
    blocks += _runs_section(runs, tables)

    title = "YOCO report"
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(title, blocks))
    page.write_text(to_html(title, blocks))
    return {"md": md, "html": page, "figures": figures, "tables": tables, "runs": runs}


def earlier_figures(out: Path) -> list[Path]:
    """The figures the report already in ``out`` shows (its ``report.md``'s images, by the names
    this module gives them): the only files a new report there removes."""
    md = out / "report.md"
    if not md.is_file():
        return []
    names = re.findall(r"^!\[.*\]\(([^()/\\]+\.png)\)$", md.read_text(errors="replace"), re.M)
    return [out / n for n in dict.fromkeys(names) if any(fnmatch.fnmatch(n, p) for p in _OUR_FIGURES)]


def _overview(runs: list[Run], frames, generated_by: str) -> list[Block]:
    """The folders, devices and row counts read, and how the report was made."""
    devices = sorted({d for r in runs for df in r.frames.values() for d in df["device"].astype(str) if d})
    n_rows = {s.name: len(df) for s, df in zip(KINDS, frames)}
    return [Block("p", f"{len(runs)} results folder(s): "
                  + ", ".join(f"`{r.label}`" for r in runs) + ". Devices: "
                  + (", ".join(devices) or "n/a") + ". Rows: "
                  + ", ".join(f"{k} {v}" for k, v in n_rows.items() if v) + "."),
            Block("p", f"Generated {schemas.utc_now()} by `{generated_by}` (yoco {_version()}).")]


def _headline(profile: pd.DataFrame, needle: pd.DataFrame, tables: dict) -> list[Block]:
    """YOCO / baseline ratios, the best batch per context and needle accuracy per length."""
    ratios = ratio_table(profile) if not profile.empty else pd.DataFrame()
    needle_acc = needle_table(needle)
    best = batch_table(profile) if not profile.empty else pd.DataFrame()
    protocol = throughput_table(profile) if not profile.empty else pd.DataFrame()
    if ratios.empty and needle_acc.empty and best.empty and protocol.empty:
        return []
    blocks = [Block("h2", "Headline")]
    if not ratios.empty:
        tables["ratios"] = ratios
        lone = ratios.apply(lambda r: r.astype(str).str.contains(" OOM| skipped").any(), axis=1)
        blocks.append(Block("p", "YOCO over each baseline at each context length (measured on the same "
                            "device): memory saved = baseline peak memory / YOCO's, prefill speed-up = "
                            "baseline prefill time / YOCO's, throughput gain = YOCO decode tokens/s / "
                            "baseline's. Above 1x YOCO is better."
                            + (" Each YOCO model (column YOCO model) is compared on its own."
                               if "YOCO model" in ratios.columns else "")
                            + (f" In {int(lone.sum())} cell(s) YOCO ran where the baseline did not "
                               "(marked with the baseline's OOM / skipped status)." if lone.any() else "")))
        blocks.append(Block("table", ratios, "Headline ratios"))
    if not best.empty:
        tables["batch"] = best
        over = pd.to_numeric(best["share of read bandwidth"], errors="coerce").gt(1).any()
        blocks.append(Block("table", best, "Decode throughput at the best batch size, per context "
                            "(contexts measured at several batch sizes); share of read bandwidth = the "
                            "bytes a step must read per second over the read bandwidth measured in the run"
                            + (" (above 1: a step read faster than the run's read kernels, in a run from before "
                               "such a step raised the ceiling)" if over else "")))
    if not protocol.empty:
        tables["throughput"] = protocol
        blocks.append(Block("p", throughput_words(profile, protocol)))
        blocks.append(Block("table", protocol, "Throughput protocol: YOCO over the Transformer, against the paper"))
    if not needle_acc.empty:
        tables["needle"] = needle_acc
        blocks.append(Block("table", needle_acc, "Needle-in-a-haystack accuracy (mean score) per context length"))
    return blocks


def _profile_section(profile: pd.DataFrame, out: Path, figures: list, tables: dict) -> list[Block]:
    blocks = [Block("h2", "Profile"),
              Block("p", "Lines join the cells that ran (status ok); an x at the top edge marks a "
                    "cell that ran out of memory (OOM) or was skipped because its memory estimate "
                    "exceeded the device. Several devices or runs are separate lines.")]
    written = (plots.profile_figures(profile, out) + plots.ratio_figures(profile, out)
               + plots.throughput_figure(profile, out))
    captions = {f: t for f, _, _, t in plots.PROFILE_METRICS}
    captions["profile_ratios.png"] = "YOCO over baseline: memory saved, prefill speed-up, throughput gain"
    captions[plots.THROUGHPUT_FIGURE] = ("Throughput protocol (prefill + generation at the largest batch that fits, "
                                         "or the cap) against the YOCO paper's Fig. 6")
    for p in written:
        blocks.append(Block("img", p, captions.get(p.name, p.stem)))
    figures += written
    tables["profile"] = profile_table(profile)
    blocks.append(Block("table", tables["profile"], "All profile cells"))
    return blocks


def _runs_section(runs: list[Run], tables: dict) -> list[Block]:
    """Device, versions and dates of each results file, and the commands of each folder."""
    tables["runs"] = runs_table(runs)
    blocks = [Block("h2", "Runs"),
              Block("table", tables["runs"], "Device, versions and dates of each results file"),
              Block("h3", "Commands")]
    for r in runs:
        lines = [f"{when}  {cmd}".strip() for when, cmd in r.commands]
        blocks.append(Block("p", f"`{r.label}`" + ("" if lines else ": no commands.txt (command not recorded)")))
        if lines:
            blocks.append(Block("code", lines))
    return blocks


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("yoco")
    except Exception:
        return "unknown"
