"""The one place that defines each results CSV: its columns, their meaning, and its cell key.

``needle.csv``, ``profile.csv`` and ``eval.csv`` are written by their subcommands and read by
``yoco report``; every writer and reader goes through ``Schema`` so the columns cannot drift.
Rows are appended as they are measured (``append_row``), so an interrupted sweep keeps what it
measured and ``--resume`` can skip the cells already present (``done_keys``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


class SchemaError(Exception):
    """A CSV that is not the schema it claims to be (foreign, damaged, or truncated)."""


@dataclass(frozen=True)
class Schema:
    name: str                      # file name, e.g. "needle.csv"
    columns: tuple[tuple[str, str, str], ...]   # (column, dtype: str|int|float|bool, meaning)
    key: tuple[str, ...]           # columns that identify one cell (for --resume)

    @property
    def names(self) -> list[str]:
        return [c for c, _, _ in self.columns]

    def path(self, folder) -> Path:
        return Path(folder) / self.name

    def append_row(self, folder, row: dict) -> None:
        """Append one row (unknown keys are an error; missing ones are written empty)."""
        extra = set(row) - set(self.names)
        if extra:
            raise ValueError(f"{self.name}: unknown columns {sorted(extra)}")
        path = self.path(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.names)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.names})
            f.flush()

    def read(self, path) -> pd.DataFrame:
        """Read and validate; a foreign or damaged file raises ``SchemaError`` (one line). The
        ``dtype`` column comes back in the one spelling of ``yoco_core.dtypes.canonical``."""
        path = Path(path)
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as e:
            raise SchemaError(f"{path}: not a readable CSV ({type(e).__name__})") from None
        missing = [c for c in self.names if c not in df.columns]
        if missing:
            raise SchemaError(f"{path}: not a {self.name} (missing columns: {', '.join(missing[:5])})")
        self._check_fields(path)
        for col, kind, _ in self.columns:
            if kind in ("int", "float"):
                vals = pd.to_numeric(df[col].replace("", None), errors="coerce")
                bad = df[col].ne("") & (vals.isna() | vals.isin([float("inf"), float("-inf")]))
                if kind == "int":
                    bad |= vals.notna() & (vals != vals.round())
                if bad.any():
                    i = int(bad.idxmax())
                    what = "a whole number" if kind == "int" else "a finite number"
                    raise SchemaError(f"{path}: row {i + 2}, column {col}: {df[col][i]!r} is not {what}")
                df[col] = vals
        if "dtype" in self.names:       # one spelling: older needle.csv files say bfloat16, float32
            from yoco_core.dtypes import canonical   # deferred: torch is not needed to import the CLI

            df["dtype"] = df["dtype"].map(canonical)
        return df

    @staticmethod
    def _check_fields(path: Path) -> None:
        """Refuse rows with more or fewer fields than the header (a truncated or damaged write),
        which pandas would pad with empty cells or shift silently."""
        try:
            with path.open(newline="") as f:
                rows = csv.reader(f)
                width = len(next(rows, []))
                for i, row in enumerate(rows, start=2):
                    if row and len(row) != width:
                        what = "truncated" if len(row) < width else "has extra fields"
                        raise SchemaError(f"{path}: row {i} {what} ({len(row)} fields, header has {width})")
        except UnicodeDecodeError:
            raise SchemaError(f"{path}: not a text CSV (undecodable bytes)") from None
        except csv.Error as e:
            raise SchemaError(f"{path}: not a readable CSV ({e})") from None

    def open_sweep(self, folder, resume: bool) -> set[tuple[str, ...]]:
        """Where a sweep starts: a results file already there is continued with ``resume`` (the
        keys it holds are returned, to skip) and refused without it, so two runs never mix."""
        path = self.path(folder)
        if path.exists() and path.stat().st_size and not resume:
            raise SchemaError(f"{path} already exists: add --resume to continue it, or choose another --out")
        return self.done_keys(folder) if resume else set()

    def done_keys(self, folder) -> set[tuple[str, ...]]:
        path = self.path(folder)
        if not path.exists() or path.stat().st_size == 0:
            return set()
        df = self.read(path)
        return {self.key_of(r) for r in df.to_dict("records")}

    def key_of(self, row: dict) -> tuple[str, ...]:
        """The cell a row measured, one spelling per value: numbers as ``_norm`` writes them, the
        dtype as ``yoco_core.dtypes.canonical`` does (older needle.csv files say ``bfloat16``)."""
        from yoco_core.dtypes import canonical

        return tuple(canonical(row.get(k, "")) if k == "dtype" else _norm(row.get(k, "")) for k in self.key)


def _norm(v) -> str:
    """One spelling per value: 4096, 4096.0 and "4096" all give "4096"; 0.5 and "0.5" give "0.5"."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f != f or f in (float("inf"), float("-inf")):
        return str(v)
    return str(int(f)) if f == int(f) else repr(f)


NEEDLE = Schema(
    name="needle.csv",
    columns=(
        ("model", "str", "model name or path as given"),
        ("arch", "str", "yoco or transformer"),
        ("task", "str", "single, multi-needle, multi-key or multi-value"),
        ("haystack", "str", "noise, text, or the haystack file's path"),
        ("ctx_requested", "int", "requested prompt length in tokens"),
        ("ctx_tokens", "int", "actual prompt length in tokens"),
        ("depth", "float", "needle depth, 0 = start of the haystack, 1 = end"),
        ("n_needles", "int", "needles inserted"),
        ("trial", "int", "trial index within the cell"),
        ("seed", "int", "seed the needle values were drawn from"),
        ("expected", "str", "the needle value(s), '|'-separated"),
        ("prediction", "str", "the generated answer"),
        ("score", "float", "share of expected values found in the answer (exact match)"),
        ("prefill_seconds", "float", "time to first token"),
        ("device", "str", "device name"),
        ("dtype", "str", "model dtype"),
        ("date", "str", "UTC time the row was measured"),
    ),
    key=("model", "task", "haystack", "ctx_requested", "depth", "n_needles", "trial", "seed", "dtype"),
)

PROFILE = Schema(
    name="profile.csv",
    columns=(
        ("arch", "str", "yoco, transformer, hf or fla"),
        ("model", "str", "preset or model description"),
        ("size", "str", "size name, e.g. 3b"),
        ("params", "int", "parameter count"),
        ("ctx", "int", "context length in tokens"),
        ("batch", "int", "batch size"),
        ("status", "str", "ok, oom, skipped (over memory by estimate) or error"),
        ("prefill_s", "float", "prefill latency (time to first token), seconds"),
        ("decode_ms", "float", "decode latency per step at this context, milliseconds"),
        ("decode_tok_s", "float", "decode throughput, tokens/s over the batch"),
        ("peak_alloc_gb", "float", "peak GPU memory allocated, GB (1e9 bytes)"),
        ("peak_reserved_gb", "float", "peak GPU memory reserved, GB"),
        ("cache_gb", "float", "KV cache + state bytes after prefill, GB"),
        ("est_gb", "float", "analytic memory estimate for the cell, GB"),
        ("prefill_tflops", "float", "achieved prefill TFLOP/s (analytic FLOPs / time)"),
        ("prefill_share", "float", "prefill TFLOP/s over the measured matmul rate"),
        ("decode_gb_per_token", "float", "bytes a decode step must read (weights + cache), GB"),
        ("decode_share", "float", "decode bytes/s over the measured copy bandwidth"),
        ("matmul_tflops", "float", "measured matmul ceiling of this run, in the run's dtype (bf16 on GPU)"),
        ("copy_tbs", "float", "measured device copy bandwidth of this run, TB/s"),
        ("gen_tokens", "int", "decode steps timed"),
        ("chunk_size", "int", "prefill chunk size (0 = unchunked)"),
        ("device", "str", "device name"),
        ("dtype", "str", "model dtype"),
        ("torch", "str", "torch version"),
        ("triton", "str", "triton version"),
        ("date", "str", "UTC time the row was measured"),
        ("note", "str", "error text or remark"),
    ),
    key=("arch", "model", "size", "ctx", "batch", "dtype"),
)

EVAL = Schema(
    name="eval.csv",
    columns=(
        ("task", "str", "lm-eval task name"),
        ("metric", "str", "metric name (lm-eval's, filter suffix removed)"),
        ("value", "float", "metric value"),
        ("stderr", "float", "standard error, empty when lm-eval gives none"),
        ("model", "str", "model name or path as given"),
        ("num_fewshot", "int", "few-shot examples"),
        ("limit", "int", "documents per task (empty: all)"),
        ("device", "str", "device name"),
        ("date", "str", "UTC time of the run"),
    ),
    key=("task", "metric", "model"),
)

SCHEMAS = {s.name: s for s in (NEEDLE, PROFILE, EVAL)}


def needle_row(cell, *, model: str, arch: str, haystack: str, device: str, dtype: str) -> dict:
    """A ``needle.csv`` row: what one cell measured (``yoco_core.needle.NeedleResult``) and what
    ran it (``dtype`` as ``yoco_core.dtypes.name_of`` spells it)."""
    row = dict(vars(cell), model=model, arch=arch, haystack=haystack, device=device, dtype=dtype,
               date=utc_now())
    row["expected"] = "|".join(cell.expected)
    row["prefill_seconds"] = round(cell.prefill_seconds, 6)
    return {c: row[c] for c in NEEDLE.names}


def utc_now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_command(folder, command: str) -> None:
    """Record the command line that produced a results folder (appended: one line per run)."""
    path = Path(folder) / "commands.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"{utc_now()}\t{command}\n")
