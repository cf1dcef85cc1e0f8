"""The one place that defines each results CSV: its columns, their meaning, and its cell key.

``needle.csv``, ``profile.csv`` and ``eval.csv`` are written by their subcommands and read by
``yoco report``; every writer and reader goes through ``Schema`` so the columns cannot drift.
Rows are appended as they are measured (``append_row``), so an interrupted sweep keeps what it
measured and ``--resume`` can skip the cells already present (``done_keys``).

Faults an append survives (``append_row``): a last line left without its line ending by a crash
is repaired first (a complete row gets its newline; a partial one, fewer fields than the header,
a broken quote or a field that is not its type, is moved to ``<csv>.partial`` with a one-line
warning); a write that fails (disk full) is cut back to the bytes before it and raises
``WriteError``, so the file holds only complete rows. A file of any older layout, without some of
the columns added since (``Schema.legacy``), is read with the values old runs implied, and
rewritten in the new layout at the first append. One writer per results folder: ``lock_results``.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:                  # pandas loads when a file is read, not at every command's start
    import pandas as pd


class SchemaError(Exception):
    """A CSV that is not the schema it claims to be (foreign, damaged, or truncated)."""


class WriteError(SchemaError):
    """A results file that could not be written (disk full, read-only, ...): one line; the rows
    written before are kept, the failed write is removed."""


class LockedError(SchemaError):
    """A results folder another live run is writing (``lock_results``)."""


LOCK_NAME = ".yoco.lock"
_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

@dataclass(frozen=True)
class Schema:
    name: str                      # file name, e.g. "needle.csv"
    columns: tuple[tuple[str, str, str], ...]   # (column, dtype: str|int|float|bool, meaning)
    key: tuple[str, ...]           # columns that identify one cell (for --resume)
    # columns added after files were written without them: column -> its value in an old row
    # (a dict of the row's strings); such a file still reads, resumes and reports
    legacy: dict[str, Callable[[dict], str]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c for c, _, _ in self.columns]

    def path(self, folder) -> Path:
        return Path(folder) / self.name

    def append_row(self, folder, row: dict) -> None:
        """Append one row (unknown keys are an error; missing ones are written empty), after
        ``repair`` and ``upgrade``; a failed write is cut back off the file (``WriteError``)."""
        extra = set(row) - set(self.names)
        if extra:
            raise ValueError(f"{self.name}: unknown columns {sorted(extra)}")
        path = self.path(folder)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"{path.parent}: cannot create the results folder ({e.strerror})") from None
        self.repair(folder)
        self.upgrade(folder)
        new = not path.exists() or path.stat().st_size == 0
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=self.names)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in self.names})
        _append_bytes(path, text.getvalue().encode("utf-8"))

    def repair(self, folder) -> None:
        """A last line without its line ending (a crash, a full disk): a complete row gets its
        newline; a partial one is moved to ``<csv>.partial`` (appended) with a warning on stderr."""
        path = self.path(folder)
        if not path.exists() or path.stat().st_size == 0:
            return
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
        data = path.read_bytes()
        start, complete = self._last_record(data)
        if complete:
            _append_bytes(path, b"\n" if data.endswith(b"\r") else b"\r\n")
            return
        partial = path.with_name(path.name + ".partial")
        _append_bytes(partial, data[start:].rstrip(b"\r") + b"\n")
        try:
            os.truncate(path, start)
        except OSError as e:
            raise WriteError(f"{path}: cannot remove its partial last row ({e.strerror})") from None
        print(f"warning: {path}: its last row was cut off (a crash or a full disk); moved it to {partial}",
              file=sys.stderr, flush=True)

    def _last_record(self, data: bytes) -> tuple[int, bool]:
        """Where the last record of ``data`` starts (a byte offset), and whether it is a whole row:
        as many fields as the header, quotes closed, its numbers and dates whole (else a cut write)."""
        text = data.decode("utf-8", errors="surrogateescape")
        records = _records(text)
        if not records:
            return 0, False
        start, last = records[-1]
        if len(records) == 1:               # the header itself lost its line ending, or was cut
            return 0, self.is_layout(last)
        offset = len(text[:start].encode("utf-8", errors="surrogateescape"))
        try:
            (last,) = list(csv.reader(io.StringIO(text[start:], newline=""), strict=True))
        except (csv.Error, ValueError):         # a quote left open, or not one record
            return offset, False
        return offset, self._whole(records[0][1], last)

    def _whole(self, header: list[str], fields: list[str]) -> bool:
        if len(fields) != len(header):
            return False
        kinds = {c: k for c, k, _ in self.columns}
        for col, v in zip(header, fields):
            if v and kinds.get(col) in ("int", "float") and not _is_number(v):
                return False
            if v and col == "date" and not _DATE.fullmatch(v):
                return False
        return True

    def is_layout(self, header: list[str]) -> bool:
        """Whether ``header`` is this layout's or an older one's: this schema's columns, each once,
        in any order, every one it lacks a ``legacy`` column (added since)."""
        return (len(set(header)) == len(header) and set(header) <= set(self.names)
                and set(self.names) - set(header) <= set(self.legacy))

    def upgrade(self, folder) -> None:
        """Rewrite a file of an older layout (any of the ``legacy`` columns missing) in this one,
        old rows given their implied values; written beside it and renamed over it, so it is never
        half."""
        path = self.path(folder)
        if not path.exists() or path.stat().st_size == 0:
            return
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
        if header == self.names:
            return
        if not self.is_layout(header):
            raise SchemaError(f"{path}: not a {self.name} of this or an older layout; choose another --out")
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=self.names)
        w.writeheader()
        w.writerows(self._fill_legacy(rows))
        tmp = path.with_name(path.name + ".upgrading")
        try:
            tmp.write_bytes(text.getvalue().encode("utf-8"))
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise WriteError(f"{path}: cannot rewrite it in the new layout ({e.strerror}); it is unchanged") from None

    def _fill_legacy(self, rows: list[dict]) -> list[dict]:
        for r in rows:
            for col, implied in self.legacy.items():
                if col not in r:
                    r[col] = implied(r)
        return rows

    def read(self, path) -> pd.DataFrame:
        """Read and validate; a foreign or damaged file raises ``SchemaError`` (one line). The
        ``dtype`` column comes back in the one spelling of ``yoco_core.dtypes.canonical``; a
        ``legacy`` column an older file lacks comes back with the values old runs implied."""
        import pandas as pd

        path = Path(path)
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as e:
            raise SchemaError(f"{path}: not a readable CSV ({type(e).__name__})") from None
        missing = [c for c in self.names if c not in df.columns and c not in self.legacy]
        if missing:
            raise SchemaError(f"{path}: not a {self.name} (missing columns: {', '.join(missing[:5])})")
        self._check_fields(path)
        for col, implied in self.legacy.items():
            if col not in df.columns:
                df[col] = [implied(r) for r in df.to_dict("records")] if len(df) else pd.Series(dtype=str)
        df = df[self.names + [c for c in df.columns if c not in self.names]]
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
        keys it holds are returned, to skip; a cut-off last row repaired first) and refused
        without it, so two runs never mix."""
        path = self.path(folder)
        if path.exists() and path.stat().st_size and not resume:
            raise SchemaError(f"{path} already exists: add --resume to continue it, or choose another --out")
        if resume:
            self.repair(folder)
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


def _records(text: str) -> list[tuple[int, list[str]]]:
    """Each CSV record of ``text`` with the offset (in characters) where it starts; a quoted field
    may hold line breaks, so records are counted by the lines the reader took for each."""
    lines = io.StringIO(text, newline="").readlines()
    taken = 0

    def feed():
        nonlocal taken
        for line in lines:
            taken += len(line)
            yield line

    reader, out = csv.reader(feed()), []
    while True:
        start = taken
        try:
            out.append((start, next(reader)))
        except (StopIteration, csv.Error):
            return out


def _is_number(v: str) -> bool:
    try:
        f = float(v)
    except ValueError:
        return False
    return f == f and f not in (float("inf"), float("-inf"))


def _write_all(f, data: bytes) -> None:
    """Write every byte of ``data`` to the unbuffered file ``f`` (a short write is continued)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def _append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` whole or not at all: a failed write (disk full, ...) is cut back to the
    file's size before it and raises ``WriteError`` (one line)."""
    try:
        f = path.open("ab", buffering=0)
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({e.strerror})") from None
    with f:
        size = f.seek(0, os.SEEK_END)
        try:
            _write_all(f, data)
        except OSError as e:
            try:
                f.truncate(size)
            except OSError:
                pass                  # the next append sets the partial row aside (repair)
            what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
            raise WriteError(f"{path}: {what} while writing a row; the rows before it are kept, "
                             "free some space and run again with --resume") from None


def _norm(v) -> str:
    """One spelling per value: 4096, 4096.0 and "4096" all give "4096"; 0.5 and "0.5" give "0.5";
    an empty value ("", None, or the NaN a read gives an empty number) gives ""."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f != f or f in (float("inf"), float("-inf")):
        return str(v)
    return str(int(f)) if f == int(f) else repr(f)


# needle.csv's cell: what changes the answer the model gives. --model, --task, --needles
# (n_needles), --haystack, --ctx (ctx_requested), the depth, the trial, --seed (the needle values)
# and --dtype (another precision can change a greedy answer). Not in it: --device and
# --chunk-size, which change how fast a prompt is prefilled, not the answer (the same function
# evaluated in pieces or on another chip); a --resume with another one continues the same grid
# (the device column still tells the rows' prefill_seconds apart), instead of measuring every
# prompt a second time and counting it twice in the accuracy.
NEEDLE = Schema(
    name="needle.csv",
    columns=(
        ("model", "str", "model name or path as given"),
        ("arch", "str", "yoco or transformer"),
        ("task", "str", "single, multi-needle, multi-key or multi-value"),
        ("haystack", "str", "noise, text, or the haystack file's path"),
        ("chat_template", "str", "the prompts' chat template: none, model (the model folder's) or the jinja file's path"),
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
    key=("model", "task", "haystack", "chat_template", "ctx_requested", "depth", "n_needles", "trial", "seed",
         "dtype"),
    legacy={"chat_template": lambda row: "none"},     # rows written before the column: plain prompts
)

# profile.csv's cell: every option that changes what is timed. --arch, the model (--size,
# --self-decoder: yoco-swa-* in model), --ctx, --batch, --dtype; mode (--decode-only: no prefill,
# another cache; --throughput: the batch chosen, see below), --gen-tokens (the decode steps, and
# the cache reserved for them), timed_steps (--timed-steps: how many of them ran and were timed),
# timed_prefills (--timed-prefills: the batch prefilled one sequence at a time, that many timed),
# chunk_size (--chunk-size, as the effective chunk of the cell: auto and an explicit 8k that come
# to the same chunk are one cell), device (the chip's name: a --resume on another GPU measures
# anew), gpus and parallel (--tp N: the N processes of one tensor-parallel group, ``tpN``: never
# one cell with a one-process row). Not in it: --repeats (more samples of the same prefill), --seed
# (other random token ids of the same length), --memory-gb and batch_cap (a throughput cell's --batch cap: its rows say what
# capped them, but another cap measures the same cell). A throughput cell is (arch, model, size, ctx, ...): its rows
# hold the batches tried, and it is done once one of them is not an out-of-memory (or batch 1 is;
# yoco_cli/profile.py), whatever batch a --batch cap or --memory-gb gave it.
# Older files: before the mode column, decode-only rows are those whose note starts "decode only"
# (what measured decode-only rows say), the others full; before timed_steps, every step was timed
# (timed_steps = gen_tokens); before timed_prefills, every batch was prefilled whole (blank);
# before read_tbs, no read bandwidth was measured and their
# decode_share is over copy_tbs (yoco report shows no share for them); no throughput columns (nor
# batch_cap: blank); before gpus and parallel, every row was one process's (gpus 1, parallel blank); before
# warmup_prefill_s, the warm-up's prefill was not timed (blank).
PROFILE = Schema(
    name="profile.csv",
    columns=(
        ("arch", "str", "yoco, transformer, hf or fla"),
        ("model", "str", "preset or model description"),
        ("size", "str", "size name, e.g. 3b"),
        ("params", "int", "parameter count"),
        ("ctx", "int", "context length in tokens"),
        ("batch", "int", "batch size"),
        ("batch_cap", "int", "throughput mode: the largest batch the search could try (--batch, or the CPU's "
                             "default of --batch auto; empty: none), so a batch equal to it may be below the "
                             "largest that fits"),
        ("status", "str", "ok, oom, skipped (over memory by estimate) or error"),
        ("prefill_s", "float", "prefill latency (time to first token), seconds"),
        ("warmup_prefill_s", "float", "the cell's warm-up prefill (the same prefill, before the timed ones: "
                                      "one-time builds included), seconds; with --cold-after, a cell whose warm-up "
                                      "took longer is timed by it alone (prefill_s equal, the note says so)"),
        ("decode_ms", "float", "decode latency per step at this context, milliseconds"),
        ("decode_tok_s", "float", "decode throughput, tokens/s over the batch"),
        ("decode_s", "float", "throughput mode: time to decode gen_tokens tokens after the prefill, seconds "
                              "(extrapolated from timed_steps where fewer: see note)"),
        ("throughput_tok_s", "float", "throughput mode: batch x gen_tokens / (prefill_s + decode_s), tokens/s"),
        ("peak_alloc_gb", "float", "peak GPU memory allocated, GB (1e9 bytes)"),
        ("peak_reserved_gb", "float", "peak GPU memory reserved, GB"),
        ("cache_gb", "float", "KV cache + state bytes after prefill, GB (with --tp: one rank's share)"),
        ("est_gb", "float", "analytic memory estimate for the cell, GB (with --tp: one rank's)"),
        ("prefill_tflops", "float", "achieved prefill TFLOP/s (analytic FLOPs / time; with --tp: one rank's FLOPs)"),
        ("prefill_share", "float", "prefill TFLOP/s over the measured matmul rate"),
        ("decode_gb_per_token", "float", "bytes a decode step must read (weights + cache), GB (with --tp: one "
                                         "rank's share)"),
        ("decode_share", "float", "decode bytes/s over the measured read bandwidth read_tbs (rows without read_tbs: "
                                  "over copy_tbs, as measured before read_tbs)"),
        ("matmul_tflops", "float", "measured matmul ceiling of this run, in the run's dtype (bf16 on GPU)"),
        ("copy_tbs", "float", "measured device copy bandwidth of this run, bytes read + written, TB/s"),
        ("read_tbs", "float", "read ceiling of this run, TB/s: the fastest of its read kernels (a sum, a GEMV and "
                              "the decode attention kernel, over 16 GiB on a GPU, the best of 20 runs), or, from a "
                              "row whose decode step read faster (its note says so) on, that step's rate"),
        ("mode", "str", "full (prefill, then decode), decode-only (--decode-only: decode from a random cache) or "
                        "throughput (--throughput: the largest batch that fits, prefilled, then gen_tokens decoded)"),
        ("gen_tokens", "int", "decode steps of the cell (the cache has room for them)"),
        ("timed_steps", "int", "decode steps run and timed (throughput mode: fewer than gen_tokens with "
                               "--timed-steps)"),
        ("timed_prefills", "int", "throughput mode with --timed-prefills: the batch prefilled one sequence at a "
                                  "time, this many of them timed, prefill_s = batch x their median (empty: the "
                                  "batch prefilled whole)"),
        ("chunk_size", "int", "prefill chunk size (0 = unchunked)"),
        ("device", "str", "device name"),
        ("gpus", "int", "processes (devices: GPUs, or CPU processes) that ran the cell together: 1, or N with --tp N"),
        ("parallel", "str", "their layout: tpN (tensor parallel over N ranks, the rows rank 0's); empty: one process"),
        ("dtype", "str", "model dtype"),
        ("torch", "str", "torch version"),
        ("triton", "str", "triton version"),
        ("date", "str", "UTC time the row was measured"),
        ("note", "str", "error text or remark"),
    ),
    key=("arch", "model", "size", "ctx", "batch", "dtype", "mode", "gen_tokens", "timed_steps", "timed_prefills",
         "chunk_size", "device", "gpus", "parallel"),
    legacy={"mode": lambda row: "decode-only" if str(row.get("note", "")).startswith("decode only") else "full",
            "timed_steps": lambda row: row.get("gen_tokens", ""), "read_tbs": lambda row: "",
            "decode_s": lambda row: "", "throughput_tok_s": lambda row: "", "batch_cap": lambda row: "",
            "gpus": lambda row: "1", "parallel": lambda row: "", "timed_prefills": lambda row: "",
            "warmup_prefill_s": lambda row: ""},
)

EVAL = Schema(
    name="eval.csv",
    columns=(
        ("task", "str", "lm-eval task name"),
        ("metric", "str", "metric name (lm-eval's, filter suffix removed)"),
        ("value", "float", "metric value"),
        ("stderr", "float", "standard error, empty when lm-eval gives none"),
        ("model", "str", "model name or path as given"),
        ("chat_template", "str", "the chat template lm-eval applied: none, model (the model folder's) or the jinja file's path"),
        ("num_fewshot", "int", "few-shot examples"),
        ("limit", "int", "documents per task (empty: all)"),
        ("device", "str", "device name"),
        ("date", "str", "UTC time of the run"),
    ),
    key=("task", "metric", "model", "chat_template"),
    legacy={"chat_template": lambda row: "none"},
)

SCHEMAS = {s.name: s for s in (NEEDLE, PROFILE, EVAL)}


def needle_row(cell, *, model: str, arch: str, haystack: str, device: str, dtype: str,
               chat_template: str = "none") -> dict:
    """A ``needle.csv`` row: what one cell measured (``yoco_core.needle.NeedleResult``) and what
    ran it (``dtype`` as ``yoco_core.dtypes.name_of`` spells it)."""
    row = dict(vars(cell), model=model, arch=arch, haystack=haystack, device=device, dtype=dtype,
               chat_template=chat_template, date=utc_now())
    row["expected"] = "|".join(cell.expected)
    row["prefill_seconds"] = round(cell.prefill_seconds, 6)
    return {c: row[c] for c in NEEDLE.names}


def utc_now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_command(folder, command: str) -> None:
    """Record the command line that produced a results folder (appended: one line per run)."""
    path = Path(folder) / "commands.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{path.parent}: cannot create the results folder ({e.strerror})") from None
    _append_bytes(path, f"{utc_now()}\t{command}\n".encode("utf-8"))


@contextmanager
def writing(folder, what: str) -> Iterator[None]:
    """Around writing ``what`` (figures, ...) into a results folder: a failure to write (disk
    full, read-only) is ``WriteError``, one line, instead of a traceback; the CSV rows stay."""
    try:
        yield
    except OSError as e:
        reason = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
        raise WriteError(f"{folder}: cannot write {what} ({reason}); the measured rows are kept") from None


# -- one writer per results folder -----------------------------------------------------------
@contextmanager
def lock_results(folder, command: str) -> Iterator[Path]:
    """Hold ``folder/.yoco.lock`` (this process's pid, host and ``command``) while a run writes
    the folder. Another live holder: ``LockedError`` at once, naming its pid and command; a lock
    whose process is gone (killed, crashed) is taken over. Removed on the way out, whatever
    ends the run (an error, Ctrl-C). The check and the write happen under an ``flock`` of the
    folder, so two runs starting together cannot both take it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{folder}: cannot create the results folder ({e.strerror})") from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": utc_now()}
    with _folder_mutex(folder):
        holder = _lock_holder(path)
        if holder is not None and _alive(holder):
            where = "" if holder.get("host") == me["host"] else f" on {holder.get('host')}"
            raise LockedError(f"{folder} is being written by pid {holder.get('pid')}{where} "
                              f"({holder.get('command', '?')}); wait for it, or remove {path} if no such run is going")
        if holder is not None:
            print(f"warning: {folder}: took over the lock of pid {holder.get('pid')}, which is no longer running",
                  file=sys.stderr, flush=True)
        tmp = folder / f"{LOCK_NAME}.{os.getpid()}"
        try:
            tmp.write_text(json.dumps(me) + "\n")
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise WriteError(f"{folder}: cannot write {LOCK_NAME} ({e.strerror})") from None
    try:
        yield path
    finally:
        with _folder_mutex(folder):
            if (_lock_holder(path) or {}).get("pid") == me["pid"]:
                path.unlink(missing_ok=True)


@contextmanager
def _folder_mutex(folder: Path):
    """An exclusive ``flock`` of the folder for a few milliseconds (released by the kernel if the
    process dies); where the file system has none, no mutex."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def _lock_holder(path: Path) -> dict | None:
    """The lock file's record; an unreadable or foreign one counts as a dead holder's."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return {"pid": "?"}
    try:
        holder = json.loads(text)
    except ValueError:
        return {"pid": "?"}
    return holder if isinstance(holder, dict) else {"pid": "?"}


def _alive(holder: dict) -> bool:
    """Whether the lock's process still runs. One on another host cannot be checked: alive."""
    if holder.get("host") not in (None, socket.gethostname()):
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
