"""`yoco eval`: lm-evaluation-harness tasks on YOCO and Transformer models, offline.

The model goes to lm-eval as the ``yoco`` model class (``yoco_cli.lm_eval_model``); tasks come from
lm-eval plus the project's ``tasks/`` folder (``TaskManager(include_path=...)``). Writes one
lm-eval results JSON per model and task (``DIR/results/<model>/<task>.json``, ``result_file``), a
flat ``DIR/eval.csv`` (``schemas.EVAL``) and ``DIR/commands.txt``, and prints a table. A re-run
of a (model, task) replaces its JSON and its eval.csv rows, so the two always hold the same
numbers; other models' and tasks' results stay.
"""
from __future__ import annotations

import contextlib
import csv
import difflib
import fnmatch
import io
import json
import os
import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import parallel, schemas
from .options import (ChatTemplateOpt, DeviceOpt, DtypeOpt, ModelOpt, OutOpt, SeedOpt, TokenizerOpt,
                      console, fail, slug)

TasksOpt = Annotated[str, typer.Option("--tasks", "-t", help="Comma list of lm-eval task names (or groups, tags, globs).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="Documents per task (default: all).")]
FewshotOpt = Annotated[Optional[int], typer.Option("--num-fewshot", min=0, help="Few-shot examples (default: the task's).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Rows per forward / generate batch.")]
MaxLenOpt = Annotated[Optional[int], typer.Option("--max-length", min=2, help="Context window for scoring (default: the model's max_seq_len).")]
MetaOpt = Annotated[Optional[str], typer.Option("--metadata", help='JSON passed to tasks, e.g. \'{"max_seq_lengths": [1024]}\' for RULER.')]
SamplesOpt = Annotated[bool, typer.Option("--log-samples/--no-log-samples", help="Also write each task's samples (JSONL).")]


def _known(tm) -> list[str]:
    return list(tm.all_tasks)


def _check_tasks(names: list[str], known: list[str], tasks_folder: Path | None) -> None:
    for name in names:
        if name in known or (any(c in name for c in "*?[") and fnmatch.filter(known, name)):
            continue
        if Path(name).suffix in (".yaml", ".yml") and Path(name).is_file():
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        where = "" if tasks_folder else " (the project's tasks/ folder was not found; set YOCO_TASKS_DIR)"
        fail(f"unknown task {name!r}{hint}{where}")


def _rows(results: dict) -> list[tuple[str, str, float, float | None]]:
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, _, filt = key.partition(",")
            err = metrics.get(f"{metric}_stderr,{filt}")
            err = float(err) if isinstance(err, (int, float)) else None
            name = metric if filt in ("", "none") else f"{metric}({filt})"
            rows.append((task, name, float(value), err))
    return rows


def eval_command(
    tasks: TasksOpt,
    model: ModelOpt = "yoco-tiny",
    limit: LimitOpt = None,
    num_fewshot: FewshotOpt = None,
    batch_size: BatchOpt = 1,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    max_length: MaxLenOpt = None,
    metadata: MetaOpt = None,
    log_samples: SamplesOpt = False,
    seed: SeedOpt = 0,
    out: OutOpt = Path("results/eval"),
    tokenizer: TokenizerOpt = None,
    chat_template: ChatTemplateOpt = "auto",
    gpus: Annotated[Optional[int], parallel.gpus_option(
        "lm-eval shares every task's documents among them and gathers the metrics; the first writes the "
        "results, the same numbers one process gives.")] = None,
    tp: Annotated[int, parallel.tp_option("The groups share the documents as --gpus processes do.")] = 1,
) -> None:
    """Run lm-evaluation-harness tasks (lm-eval's and the project's tasks/) on a model."""
    from yoco_core.parallel import data

    from .options import (chat_template_or_fail, ensure_fits, ensure_out_dir, model_config, resolve_device,
                          resolve_dtype)

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        fail("--tasks: give at least one task name")
    extra_meta = _metadata(metadata)
    parallel.check_tensor_parallel(model, tp)      # --tp: a model it cannot split, before any work
    shares = (gpus or tp) // max(1, tp) if "WORLD_SIZE" not in os.environ else None
    if limit is not None and shares and limit < shares:
        fail(f"--limit {limit} over {shares} processes (or groups): each takes a share of the documents; "
             f"use --limit {shares} or more, or fewer processes")
    parallel.launch(gpus, device, tp)    # --gpus N / --tp N: this command as N processes, then exit
    w = parallel.world_or_fail()
    dw, _ = parallel.layout(w, tp)       # the data-parallel world: groups of tp ranks
    dev = resolve_device(device)
    try:
        dev = data.device_for(dev, w)
    except ValueError as e:
        fail(str(e))
    torch_dtype = resolve_dtype(dtype, dev)
    chat_template_or_fail(None, chat_template)          # a missing jinja file: before any work
    out = ensure_out_dir(out)
    # the prompt lengths are the tasks' (unknown here): the weights, and --max-length tokens if given
    ensure_fits(model_config(model), max_length or 1, batch_size, dev, torch_dtype)
    with data.process_group(w), contextlib.ExitStack() as held:
        # rank 0 locks OUT (a second run into it: one line) and checks eval.csv before any work
        parallel.opened_by_main(w, held, out, lambda: _read_csv(out) is not None)
        if dw.parallel and w.main:
            groups = "processes" if tp == 1 else f"groups of {tp} (tensor parallel)"
            console.print(f"eval: every task's documents shared among {dw.size} {groups} (lm-eval's sharding)",
                          highlight=False, markup=False)
        elif tp > 1 and w.main:
            console.print(f"eval: tensor parallel over {tp} processes", highlight=False, markup=False)
        split = (w, tp, dw) if tp > 1 else None
        results, template_name = _evaluate(names, model, dev, torch_dtype, extra_meta, batch_size, max_length,
                                           num_fewshot, limit, log_samples, seed, tokenizer, chat_template, w.main,
                                           split)
        if not w.main:                   # lm-eval gathers the metrics on rank 0, which writes
            return
        rows = _write(out, results, model, num_fewshot, limit, dev, template_name)
    _print_table(model, rows, out)


def _evaluate(names, model, dev, torch_dtype, extra_meta, batch_size, max_length, num_fewshot, limit,
              log_samples, seed, tokenizer=None, chat_template="auto", main=True, split=None) -> tuple[dict | None, str]:
    """lm-eval's results (``samples`` included with ``log_samples``; None on a rank other than the
    first, ``main``) and the chat template applied (``none``, ``model`` or its path); lm-eval's
    complaints one line. ``split``: ``(world, tp, data-parallel world)`` of ``--tp``: the model
    sharded over its group, the documents over one rank per group."""
    from yoco_core.dtypes import name_of

    from .options import kernel_status, load_model_or_fail

    with console.status("loading lm-eval and indexing tasks"):
        from .lm_eval_model import YOCOLM, synthetic_tokenizer_for, tasks_dir  # sets the offline env
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        folder = tasks_dir()
        meta = {"tokenizer": synthetic_tokenizer_for(tokenizer or model)} | extra_meta
        tm = TaskManager(include_path=str(folder) if folder else None, metadata=meta)
    _check_tasks(names, _known(tm), folder)

    lm_model = load_model_or_fail(model, dev, torch_dtype, tokenizer)
    data_parallel = None
    if split is not None:
        w, tp, dw = split
        parallel.split_model(lm_model, w, tp, dev, model)
        data_parallel = (dw.rank, dw.size, parallel.data_group(w, tp))
    try:
        lm = YOCOLM(pretrained=model, model=lm_model, batch_size=batch_size, max_length=max_length,
                    chat_template=chat_template, data_parallel=data_parallel)
    except ValueError as e:
        fail(str(e))
    if main:
        console.print(f"[bold]yoco eval[/] {escape(model)} on {escape(', '.join(names))} ({dev}, "
                      f"{name_of(torch_dtype)})", highlight=False)
    try:
        with kernel_status():        # lm-eval draws its own progress bars: a line, not a status
            results = simple_evaluate(
                model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
                log_samples=log_samples, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed, bootstrap_iters=1000, metadata=meta,
                apply_chat_template=lm.template_name != "none",
            )
    except Exception as e:
        if _peer_stopped(e):                     # another process stopped: its own line says why
            if main:
                fail(f"another process of this run stopped ({type(e).__name__}); its line, if any, says why")
            raise typer.Exit(2) from None
        line = _lm_eval_error(e, model)          # re-raises what is not one of these
        console.print()                          # lm-eval's progress bar may have left its line open
        fail(line)
    if results is None and main:
        fail("lm-eval returned no results")
    return results, lm.template_name


def _peer_stopped(e: Exception) -> bool:
    """Whether ``e`` is a collective that failed because another process of the run stopped
    (lm-eval's gathers on a closed gloo connection)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    return isinstance(e, getattr(dist, "DistBackendError", ())) or (
        isinstance(e, RuntimeError) and any(w in str(e) for w in ("Connection closed by peer", "Connection reset")))


def _lm_eval_error(e: Exception, model: str) -> str:
    """The one line for what ``simple_evaluate`` raised: an allocation failure, lm-eval's own
    complaints about task configs or names, a task's missing extra; anything else is re-raised."""
    from .options import memory_error_line

    if (line := memory_error_line(e)) is not None:
        return f"evaluating {model}: {line}"
    if isinstance(e, (KeyError, ValueError)):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"lm-eval: {first}"
    if isinstance(e, ImportError):       # RULER needs lm-eval[ruler]
        return (f"lm-eval: a task needs a package that is not installed ({e.name or e}); "
                f"e.g. RULER tasks need lm-eval[ruler]")
    raise e


def _metadata(metadata: str | None) -> dict:
    """``--metadata``: a JSON object (empty when not given)."""
    if not metadata:
        return {}
    try:
        extra_meta = json.loads(metadata)
    except json.JSONDecodeError as e:
        fail(f"--metadata: not JSON ({e.msg})")
    if not isinstance(extra_meta, dict):
        fail("--metadata: must be a JSON object")
    return extra_meta


# -- results on disk: one JSON per model and task, eval.csv holding the same numbers ---------------
def result_file(out: Path, model: str, task: str, template: str = "none") -> Path:
    """``OUT/results/<model>/<task>.json`` (with a chat template ``.../chat-<template>/<task>.json``):
    lm-eval's results JSON cut down to that task. A run replaces the files of the (model, task,
    template) it evaluated, and their rows of ``eval.csv``."""
    folder = Path(out) / "results" / _file_name(model)
    if template != "none":
        folder = folder / f"chat-{_file_name(template)}"
    return folder / f"{_file_name(task)}.json"


def _file_name(text: str) -> str:
    """``text`` where it is a safe file name, else its slug and a hash (two names, two files)."""
    import hashlib

    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", text):
        return text
    return f"{slug(text)[:80]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _task_part(results: dict, task: str, tasks: set[str]) -> dict:
    """lm-eval's results with every per-task section (``results``, ``configs``, ``n-shot``, ...:
    a dict keyed by task names) cut down to ``task``; the rest (model config, versions) as is."""
    part = {}
    for key, value in results.items():
        if isinstance(value, dict) and value and set(value) <= tasks:
            value = {task: value[task]} if task in value else {}
        part[key] = value
    return part


def _write(out: Path, results: dict, model: str, num_fewshot: int | None, limit: int | None,
           dev: str, template: str = "none") -> list[tuple[str, str, float, float | None]]:
    """Each task's result file (and samples with --log-samples), eval.csv, commands.txt; returns
    the metric rows. The JSON files are written first, then eval.csv replaced in one rename."""
    from lm_eval.utils import handle_non_serializable

    from yoco_core.perf.hardware import device_name

    samples = results.pop("samples", None) or {}
    done = list(results.get("results", {}))
    tasks = set(done) | set(samples) | set(results.get("configs", {}))
    for task in done:
        path = result_file(out, model, task, template)
        _write_atomic(path, json.dumps(_task_part(results, task, tasks), indent=2,
                                       default=handle_non_serializable, ensure_ascii=False) + "\n")
        kept = path.with_name(f"samples_{path.stem}.jsonl")
        if task in samples:
            _write_atomic(kept, "".join(json.dumps(r, default=handle_non_serializable, ensure_ascii=False)
                                        + "\n" for r in samples[task]))
        else:
            kept.unlink(missing_ok=True)          # an earlier run's samples would not match
    date, n_shot, rows = schemas.utc_now(), results.get("n-shot", {}), _rows(results)
    new = [{"task": task, "metric": metric, "value": value, "stderr": "" if err is None else err,
            "model": model, "chat_template": template, "num_fewshot": n_shot.get(task, "" if num_fewshot is None else num_fewshot),
            "limit": "" if limit is None else limit, "device": device_name(dev), "date": date}
           for task, metric, value, err in rows]
    replaced = {(model, t, template) for t in done}
    old = [r for r in _read_csv(out) if (r["model"], r["task"], r["chat_template"]) not in replaced]
    _write_csv(out, old + new)
    schemas.write_command(out, parallel.command_line())
    return rows


def _read_csv(out: Path) -> list[dict]:
    """The rows of ``OUT/eval.csv`` as written (validated first; a damaged file is one line)."""
    path = schemas.EVAL.path(out)
    if not path.exists() or path.stat().st_size == 0:
        return []
    try:
        schemas.EVAL.read(path)
        with path.open(newline="") as f:
            return [{k: r.get(k) or ("none" if k == "chat_template" else "") for k in schemas.EVAL.names}
                    for r in csv.DictReader(f)]
    except schemas.SchemaError as e:
        fail(f"{e} (--out holds it; move it aside or choose another --out)")


def _write_csv(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=schemas.EVAL.names, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _write_atomic(schemas.EVAL.path(out), buf.getvalue())


def _write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file and a rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:                 # disk full, read-only: one line (main), the old file intact
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise schemas.WriteError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None


def _print_table(model: str, rows, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"yoco eval: {model}")
    for col in ("task", "metric", "value", "stderr"):
        table.add_column(col, justify="right" if col in ("value", "stderr") else "left")
    for task, metric, value, err in rows:
        table.add_row(task, metric, f"{value:.4f}", "" if err is None else f"{err:.4f}")
    Console().print(table)               # results to stdout, as needle and profile do
    console.print(f"wrote {result_file(out, model, 'task').parent}/ (one JSON per task) and "
                  f"{schemas.EVAL.path(out)}", highlight=False, markup=False)
