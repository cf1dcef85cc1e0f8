"""`yoco needle`: needle-in-a-haystack retrieval over a context-length x depth grid (up to 1M).

The task logic (haystacks, templates, prompt building, scoring) lives in ``yoco_core.needle``;
this module parses options, checks every cell before any work, runs the sweep with a progress
bar (which says what Triton is compiling or autotuning on a first run), appends each row to
``needle.csv`` as it is measured, and draws the heatmap.

With ``--gpus N``, or started by ``torchrun --nproc-per-node N``, the prompts still to measure are
shared among N processes (``yoco_core.parallel.data``): each appends its rows to
``needle.rank<r>.csv``, and rank 0, which holds the folder's lock, merges them into ``needle.csv``
at the end in the order one process writes it. ``--resume`` counts the rows of every part file
left by an interrupted run, whatever the number of processes then or now.

With ``--tp N`` the processes form tensor-parallel groups of N (``yoco_cli.parallel.layout``):
every rank of a group loads the model, keeps its share of the heads (``apply_tensor_parallel``)
and runs the group's prompts with the others (each forward all-reduces over the group), and only
the group's first rank writes rows; ``--gpus G --tp N`` shares the cells among G/N groups as above.
The rows are the one-process run's, ``device`` saying e.g. ``... x2 (tp)``.
"""
from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import interrupts, parallel, schemas
from .options import (ChatTemplateOpt, DeviceOpt, DtypeOpt, ModelOpt, OutOpt, ResumeOpt, SeedOpt, TokenizerOpt,
                      chat_template_or_fail, console, ensure_fits, ensure_out_dir, fail, format_size,
                      kernel_status, load_model_or_fail, model_config, parse_chunk, parse_float_list, parse_size_list,
                      resolve_device, resolve_dtype)

DEFAULT_CHUNK = 32768


def _depths(depths: str | None, n_depths: int) -> list[float]:
    if depths is not None:
        values = parse_float_list(depths, "depth", 0.0, 1.0)
    else:
        if n_depths < 2:
            fail(f"--n-depths {n_depths}: need at least 2 (for one depth use --depths, e.g. --depths 0.5)")
        values = [i / (n_depths - 1) for i in range(n_depths)]
    return sorted({round(d, 4) for d in values})


def needle(
    model: ModelOpt = "yoco-tiny",
    ctx: Annotated[str, typer.Option(
        "--ctx", help="Prompt lengths in tokens, e.g. 1k,4k,32k; one size alone (e.g. 1m) sweeps 1k, 2k, 4k, ... up to it.")] = "1k,2k,4k,8k,16k,32k,64k",
    depths: Annotated[Optional[str], typer.Option(
        "--depths", help="Needle depths between 0 (start) and 1 (end), e.g. 0,0.25,0.5,0.75,1 (overrides --n-depths).")] = None,
    n_depths: Annotated[int, typer.Option("--n-depths", help="Evenly spaced depths from 0 to 1.")] = 5,
    needles: Annotated[Optional[int], typer.Option(
        "--needles", help="Needles per prompt (default: 1 for single, 4 for the multi tasks).")] = None,
    task: Annotated[str, typer.Option(
        "--task", help="single, multi-needle (asks for all), multi-key (distractor keys) or multi-value (one key, several values).")] = "single",
    trials: Annotated[int, typer.Option("--trials", help="Prompts (with fresh needle values) per cell.")] = 1,
    seed: SeedOpt = 0,
    haystack: Annotated[str, typer.Option(
        "--haystack", help="noise (repeated filler sentences), text (generated prose) or a UTF-8 text file.")] = "noise",
    chunk_size: Annotated[str, typer.Option(
        "--chunk-size", help="Prefill chunk in tokens (auto = 32k; none = whole prompt at once).")] = "auto",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    out: OutOpt = Path("runs/needle"),
    resume: ResumeOpt = False,
    tokenizer: TokenizerOpt = None,
    chat_template: ChatTemplateOpt = "auto",
    gpus: Annotated[Optional[int], parallel.gpus_option(
        "Each appends its rows to needle.rank<r>.csv as it measures them; the first merges them into needle.csv "
        "at the end, in the order one process writes it. A run that stopped leaves its part files: --resume counts "
        "their rows as done, with any number of processes.")] = None,
    tp: Annotated[int, parallel.tp_option(
        "The group's first process writes the rows; needle.csv is the one-process run's.")] = 1,
) -> None:
    """Needle-in-a-haystack retrieval: does the model find the needle at every length and depth?"""
    from yoco_core import needle as nd
    from yoco_core.parallel import data

    # -- check everything before any work ----------------------------------------------------
    ctxs = parse_size_list(ctx, doubling_from=1024)
    depth_list = _depths(depths, n_depths)
    try:
        task, n = nd.check_task(task.strip().lower(), needles)
    except ValueError as e:
        fail(str(e))
    if trials < 1:
        fail(f"--trials {trials}: must be at least 1")
    chunk = parse_chunk(chunk_size, auto=DEFAULT_CHUNK)
    chat_template_or_fail(None, chat_template)          # a missing jinja file: before any work
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    answer = nd.answer_tokens(nd.n_expected(task, n))
    parallel.check_tensor_parallel(model, tp)      # --tp: a model it cannot split, before any work
    ensure_fits(model_config(model), max(ctxs), 1, dev, torch_dtype, chunk=chunk, reserve=answer)
    out = ensure_out_dir(out)
    parallel.launch(gpus, device, tp)      # --gpus N / --tp N: this command as N processes, then exit
    w = parallel.world_or_fail()
    dw, _ = parallel.layout(w, tp)         # the data-parallel world: groups of tp ranks
    try:
        dev = data.device_for(dev, w)
    except ValueError as e:
        fail(str(e))
    with data.process_group(w), contextlib.ExitStack() as held:
        done, parts = parallel.opened_by_main(w, held, out, lambda: _open_sweep(out, resume, dw),
                                              lambda w_, value: _together(data.share, w_, value))
        with interrupts.graceful():
            sweep, cells, kept = _run(w, tp, done, parts, model, dev, torch_dtype, tokenizer, chat_template,
                                      haystack, ctxs, depth_list, task, n, trials, seed, chunk, out, resume)
            stopped = sweep.stopped or interrupts.stop_requested()
        if stopped:
            interrupts.finish(kept, stopped)
        _together(data.barrier, w)         # every rank's rows are in its part file
        if not w.main:
            return
        if parts:
            with schemas.writing(out, "needle.csv (merging the needle.rank<r>.csv part files)"):
                data.merge_parts(out, schemas.NEEDLE, [sweep.key(*cell) for cell in cells])
        _report(sweep, ctxs, depth_list, trials)


def _together(collective, w, *args):
    """A collective of the ranks (``data.share``, ``data.barrier``); where another rank died
    (killed, out of memory, ...): "interrupted", the rows kept, exit 143."""
    try:
        return collective(w, *args)
    except RuntimeError:
        interrupts.exit_interrupted("another process of this run stopped before the end; the rows measured are "
                                    "kept in needle.rank<r>.csv, --resume continues", signal.SIGTERM)


def _open_sweep(out: Path, resume: bool, w) -> tuple[set, bool]:
    """The cells already measured (needle.csv's and every part file's: ``--resume``) and whether
    rows go to part files (several processes, or part files left by a run that stopped)."""
    from yoco_core.parallel import data

    done = schemas.NEEDLE.open_sweep(out, resume)
    left = data.part_files(out, schemas.NEEDLE)
    if left and not resume:
        fail(f"{left[0][1]}: rows of a run in several processes that stopped; add --resume to continue it, "
             f"or choose another --out")
    if left:
        done = data.done_keys(out, schemas.NEEDLE)
    return done, bool(left) or w.parallel


def _run(w, tp, done, parts, model, dev, torch_dtype, tokenizer, chat_template, haystack, ctxs, depth_list, task,
         n, trials, seed, chunk, out, resume):
    """Load the model (this rank's share of it with ``--tp``), check the lengths, and measure this
    rank's (its group's) share of the cells not done. Returns the sweep, its whole grid (in
    one-process order) and the rows kept (by this rank, or its group's writer)."""
    from yoco_core import needle as nd
    from yoco_core.parallel import data

    dw, tp_rank = parallel.layout(w, tp)
    lm = load_model_or_fail(model, dev, torch_dtype, tokenizer)
    group = parallel.split_model(lm, w, tp, dev, model)
    template, template_name = chat_template_or_fail(lm.tokenizer, chat_template)
    try:
        hay = nd.make_haystack(haystack, lm.tokenizer, seed=0)
    except ValueError as e:
        fail(str(e))
    _check_lengths(lm, ctxs, task, n, template)

    sweep = _Sweep(model, lm, task, n, hay, seed, chunk, out, template, template_name,
                   rows=data.part_schema(schemas.NEEDLE, dw.rank) if parts else schemas.NEEDLE, shown=w.main,
                   tp=tp, group=group, writes=tp_rank == 0)
    cells = [(c, d, t) for c in ctxs for d in depth_list for t in range(trials)]
    todo = [cell for cell in cells if sweep.key(*cell) not in done]
    grid = f"{len(ctxs)} lengths x {len(depth_list)} depths x {trials} trial(s)"
    if tp > 1:
        grid += f", tensor parallel over {tp} processes"
    if dw.parallel:
        grid += f", {len(todo)} prompt(s) to measure shared among {dw.size} " + (
            "processes" if tp == 1 else f"groups of {tp}")
    if w.main:
        schemas.write_command(out, parallel.command_line())
        _announce(sweep, resume, len(cells) - len(todo), len(cells), grid)
    kept = _measure(sweep, data.shard(todo, dw))
    return sweep, cells, (len(done) if dw.main else 0) + kept       # a group's ranks: its writer's count


def _announce(sweep: _Sweep, resume: bool, n_done: int, n_cells: int, grid: str) -> None:
    msg = (f"needle: {sweep.model} ({sweep.lm.config.arch}) on {sweep.device}, task {sweep.task}, "
           f"{sweep.n} needle(s), {grid}")
    if resume:
        msg += f"; {n_done} of {n_cells} prompts already in {sweep.csv_path}"
    console.print(msg, highlight=False, markup=False, soft_wrap=True)


def _check_lengths(lm, ctxs: list[int], task: str, n: int, template: str | None = None) -> None:
    """Every prompt length fits the model (with its answer) and holds the task's needles (in the
    chat template, which must render)."""
    from yoco_core import needle as nd

    cfg = lm.config
    answer = nd.answer_tokens(nd.n_expected(task, n))
    try:
        smallest = nd.min_context(lm.tokenizer, task, n, template)
    except ValueError as e:                 # a template that does not render
        fail(f"--chat-template: {e}")
    for c in ctxs:
        if c + answer > cfg.max_seq_len:
            fail(f"--ctx {format_size(c)}: a {c}-token prompt plus {answer} answer tokens exceeds "
                 f"{cfg.name}'s maximum of {cfg.max_seq_len} tokens")
        if c < smallest:
            fail(f"--ctx {format_size(c)}: too small for task {task} with {n} needle(s); "
                 f"the prompt needs at least {smallest} tokens")


@dataclass
class _Sweep:
    """What every cell of one sweep shares: the model, the task, the haystack and where rows go."""
    model: str
    lm: object
    task: str
    n: int
    hay: object
    seed: int
    chunk: int | None
    out: Path
    template: str | None = None        # the chat template's text (None: plain prompts)
    template_name: str = "none"        # what needle.csv records
    rows: object = schemas.NEEDLE      # where rows go: needle.csv, or this rank's part file
    shown: bool = True                 # the progress bar (rank 0's only)
    tp: int = 1                        # tensor-parallel ranks per prompt
    group: object = None               # their process group (None: one rank)
    writes: bool = True                # this rank writes the rows (a group's first rank)
    stopped: int | None = None         # the signal the group agreed to stop on

    def __post_init__(self):
        from yoco_core.dtypes import name_of
        from yoco_core.perf.hardware import device_name

        self.csv_path = schemas.NEEDLE.path(self.out)
        self.rows_path = self.rows.path(self.out)
        self.dtype = name_of(self.lm.dtype)
        self.device = device_name(self.lm.device) + (f" x{self.tp} (tp)" if self.tp > 1 else "")

    def key(self, c: int, d: float, t: int) -> tuple[str, ...]:
        return schemas.NEEDLE.key_of(dict(model=self.model, task=self.task, haystack=self.hay.name,
                                          chat_template=self.template_name, ctx_requested=c, depth=d, n_needles=self.n, trial=t,
                                          seed=self.seed, dtype=self.dtype))

    def row(self, cell) -> dict:
        return schemas.needle_row(cell, model=self.model, arch=self.lm.config.arch, haystack=self.hay.name,
                                  device=self.device, dtype=self.dtype, chat_template=self.template_name)


def _measure(sweep: _Sweep, todo: list[tuple[int, float, int]]) -> int:
    """Run the cells still to do, appending each row to needle.csv (or this rank's part file) as
    soon as it is measured (``sweep.writes``: a tensor-parallel group's other ranks compute with it
    and write nothing); a SIGINT / SIGTERM stops it before the next cell (``_stop_agreed``). Returns
    the cells measured."""
    import torch

    from yoco_core import needle as nd

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[last]}"), console=console,
                  transient=False, disable=not sweep.shown) as progress:
        bar = progress.add_task("needle", total=len(todo), last="")
        last = [""]           # the last cell's result, shown again once no kernel is compiling

        def show(line: str | None) -> None:     # what Triton compiles or autotunes now
            progress.update(bar, last=line or last[0])

        with kernel_status(show):
            for i, (c, d, t) in enumerate(todo):
                if _stop_agreed(sweep):
                    return i
                progress.update(bar, description=f"ctx {format_size(c)} depth {d:g} trial {t}")
                try:
                    cell = nd.run_cell(sweep.lm, c, d, sweep.task, sweep.n, t, sweep.seed, sweep.hay, sweep.chunk,
                                       sweep.template)
                except torch.cuda.OutOfMemoryError:
                    fail(f"out of memory at --ctx {format_size(c)}: rows so far are in {sweep.rows_path}; "
                         f"try a smaller --chunk-size or --dtype bf16, then --resume")
                if sweep.writes:
                    sweep.rows.append_row(sweep.out, sweep.row(cell))
                last[0] = f"score {cell.score:g}  prefill {cell.prefill_seconds:.2f}s"
                progress.update(bar, advance=1, last=last[0])
    return len(todo)


def _stop_agreed(sweep: _Sweep) -> bool:
    """Whether to stop before the next cell (``parallel.stop_agreed``: with ``--tp`` the signal any
    rank of the group got), kept in ``sweep.stopped``."""
    sweep.stopped = parallel.stop_agreed(sweep.group, sweep.lm.device)
    return sweep.stopped is not None


def _report(sweep: _Sweep, ctxs: list[int], depth_list: list[float], trials: int) -> None:
    """The heatmap of every row of this task and haystack, and the table of this sweep's cells."""
    from .plots import needle_heatmap

    df = schemas.NEEDLE.read(sweep.csv_path)
    df = df[(df["task"] == sweep.task) & (df["n_needles"] == sweep.n) & (df["haystack"] == sweep.hay.name)
            & (df["chat_template"] == sweep.template_name)]
    with schemas.writing(sweep.out, "the heatmap"):
        pngs = needle_heatmap(df, Path(sweep.out) / "needle_heatmap.png")
    mine = df[(df["model"] == sweep.model) & (df["seed"] == sweep.seed) & df["ctx_requested"].isin(ctxs)
              & df["depth"].round(4).isin(depth_list) & (df["trial"] < trials)]
    _summary(mine, sweep.model, sweep.task, sweep.n, sweep.csv_path, pngs)


def _summary(df, model: str, task: str, n: int, csv_path: Path, pngs) -> None:
    table = Table(title=f"needle retrieval: {model}, task {task}, {n} needle(s)")
    table.add_column("context", justify="right")
    table.add_column("prompts", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column("found (score 1)", justify="right")
    table.add_column("mean prefill s", justify="right")
    for c, g in df.groupby("ctx_requested", sort=True):
        table.add_row(format_size(int(c)), str(len(g)), f"{g['score'].mean():.1%}",
                      str(int((g["score"] == 1).sum())), f"{g['prefill_seconds'].mean():.3f}")
    if len(df):
        table.add_row("all", str(len(df)), f"{df['score'].mean():.1%}", str(int((df["score"] == 1).sum())),
                      f"{df['prefill_seconds'].mean():.3f}", style="bold")
    out = Console()
    out.print(table)
    out.print(f"results: {csv_path}", highlight=False, markup=False, soft_wrap=True)
    for p in pngs:
        out.print(f"heatmap: {p}", highlight=False, markup=False, soft_wrap=True)
