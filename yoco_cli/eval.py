"""`yoco eval`: lm-evaluation-harness tasks on YOCO and Transformer models, offline.

The model goes to lm-eval as the ``yoco`` model class (``yoco_cli.lm_eval_model``); tasks come from
lm-eval plus the project's ``tasks/`` folder (``TaskManager(include_path=...)``). Writes lm-eval's
results JSON (``DIR/results.json``), a flat ``DIR/eval.csv`` (``schemas.EVAL``) and
``DIR/commands.txt``, and prints a table.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import schemas
from .options import DeviceOpt, DtypeOpt, ModelOpt, OutOpt, SeedOpt, command_line, console, fail

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
) -> None:
    """Run lm-evaluation-harness tasks (lm-eval's and the project's tasks/) on a model."""
    from yoco_core.dtypes import name_of

    from .options import load_model_or_fail, resolve_device, resolve_dtype

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        fail("--tasks: give at least one task name")
    extra_meta = _metadata(metadata)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)

    with console.status("loading lm-eval and indexing tasks"):
        from .lm_eval_model import YOCOLM, synthetic_tokenizer_for, tasks_dir  # sets the offline env
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        folder = tasks_dir()
        meta = {"tokenizer": synthetic_tokenizer_for(model)} | extra_meta
        tm = TaskManager(include_path=str(folder) if folder else None, metadata=meta)
    _check_tasks(names, _known(tm), folder)

    lm_model = load_model_or_fail(model, dev, torch_dtype)
    lm = YOCOLM(pretrained=model, model=lm_model, batch_size=batch_size, max_length=max_length)
    console.print(f"[bold]yoco eval[/] {escape(model)} on {escape(', '.join(names))} ({dev}, "
                  f"{name_of(torch_dtype)})", highlight=False)
    try:
        results = simple_evaluate(
            model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
            log_samples=log_samples, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed, bootstrap_iters=1000, metadata=meta,
        )
    except (KeyError, ValueError) as e:  # lm-eval's own complaints about task configs or names
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(f"lm-eval: {first}")
    except ImportError as e:             # a task whose extra is not installed (RULER: lm-eval[ruler])
        fail(f"lm-eval: a task needs a package that is not installed ({e.name or e}); "
             f"e.g. RULER tasks need lm-eval[ruler]")
    if results is None:
        fail("lm-eval returned no results")

    rows = _write(out, results, log_samples, model, num_fewshot, limit, dev)
    _print_table(model, rows, out)


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


def _write(out: Path, results: dict, log_samples: bool, model: str, num_fewshot: int | None,
           limit: int | None, dev: str) -> list[tuple[str, str, float, float | None]]:
    """results.json, each task's samples (with --log-samples), eval.csv and commands.txt; returns
    the metric rows."""
    from lm_eval.utils import handle_non_serializable

    from yoco_core.perf.hardware import device_name

    out.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", None)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=handle_non_serializable,
                                                 ensure_ascii=False) + "\n")
    if log_samples and samples:
        for task, rows in samples.items():
            with (out / f"samples_{task}.jsonl").open("w") as f:
                for r in rows:
                    f.write(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n")
    schemas.write_command(out, command_line())
    date = schemas.utc_now()
    n_shot = results.get("n-shot", {})
    rows = _rows(results)
    for task, metric, value, err in rows:
        schemas.EVAL.append_row(out, {
            "task": task, "metric": metric, "value": value, "stderr": "" if err is None else err,
            "model": model, "num_fewshot": n_shot.get(task, num_fewshot if num_fewshot is not None else ""),
            "limit": "" if limit is None else limit, "device": device_name(dev), "date": date,
        })
    return rows


def _print_table(model: str, rows, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"yoco eval: {model}")
    for col in ("task", "metric", "value", "stderr"):
        table.add_column(col, justify="right" if col in ("value", "stderr") else "left")
    for task, metric, value, err in rows:
        table.add_row(task, metric, f"{value:.4f}", "" if err is None else f"{err:.4f}")
    Console().print(table)               # results to stdout, as needle and profile do
    console.print(f"wrote {out / 'results.json'} and {schemas.EVAL.path(out)}", highlight=False, markup=False)
