"""`yoco train`: train a preset on synthetic long-context data (needles, kv lookups, copying).

The training itself lives in ``yoco_core.train`` (data in ``yoco_core.synthetic``); this module
parses and checks the options, draws a rich progress bar (step, smoothed loss, answer accuracy,
lr, tokens/s) and prints a one-line summary. ``--ship`` copies the finished weights into the
package (``yoco_core/weights/<preset>/``), where ``load_model("<preset>")`` finds them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .interrupts import exit_interrupted
from .options import (DeviceOpt, DtypeOpt, ModelOpt, SeedOpt, command_line, console, ensure_out_dir, fail,
                      format_size, parse_size, parse_size_list, resolve_device, resolve_dtype)
from .schemas import lock_results, write_command


def _amp(dtype: str) -> str:
    """The trainer's precision: ``auto``, ``bf16`` (autocast) or ``fp32``."""
    import torch

    if dtype.strip().lower() == "auto":
        return "auto"
    dt = resolve_dtype(dtype, "cpu")
    if dt == torch.float16:
        fail("--dtype fp16: training supports bf16 autocast or fp32 (fp16 would need loss scaling)")
    return "bf16" if dt == torch.bfloat16 else "fp32"


def train(
    model: ModelOpt = "yoco-tiny",
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 1400,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Run folder: checkpoints step_N/, final/, train_log.csv (default runs/train-MODEL).")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW; linear warm-up, cosine decay).")] = 2e-3,
    min_lr_ratio: Annotated[float, typer.Option("--min-lr-ratio", help="Final learning rate as a share of --lr.")] = 0.1,
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up steps (-1: 5% of --steps).")] = -1,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay (matrices only).")] = 0.1,
    batch_tokens: Annotated[str, typer.Option(
        "--batch-tokens", help="Tokens per step (batch = this // sample length), e.g. 64k.")] = "64k",
    curriculum: Annotated[str, typer.Option(
        "--curriculum", help="Sample lengths in tokens (ascending), the steps split evenly over them.")] = "512,1k,2k,4k,8k,16k,32k",
    mix_lengths: Annotated[float, typer.Option(
        "--mix-lengths", help="Share of the steps after the first length that take an earlier length (0: none).")] = 0.0,
    mix: Annotated[str, typer.Option(
        "--mix", help="Task weights: needle (the evaluated format), kv (lookups), copy.")] = "needle=0.5,kv=0.25,copy=0.25",
    needle_formats: Annotated[str, typer.Option(
        "--needle-formats", help="The needle task's format weights: single, multi-key, multi-needle, "
                                 "multi-value.")] = "single=0.15,multi-key=0.35,multi-needle=0.3,multi-value=0.2",
    needle_counts: Annotated[str, typer.Option(
        "--needle-counts", help="Weights of a multi-* sample's needle count, N=WEIGHT for N in 2..8 (e.g. 6=1,8=2); "
                                "empty: every count alike.")] = "",
    needle_order: Annotated[str, typer.Option(
        "--needle-order", help="Multi-needle / multi-value answers: text (the values in the order of the text), "
                               "asked (multi-needle in the question's order), any (a random order, commas) or asked-any "
                               "(multi-needle asked, multi-value any).")] = "text",
    lm_weight: Annotated[float, typer.Option(
        "--lm-weight", help="Weight of the loss on non-answer tokens (the answer tokens weigh 1).")] = 0.1,
    set_: Annotated[Optional[List[str]], typer.Option(
        "--set", help="Override a model setting, KEY=VALUE (repeatable), e.g. --set cross_rope=false --set dim=128.")] = None,
    log_every: Annotated[int, typer.Option("--log-every", help="Steps between log rows (and GPU syncs).")] = 10,
    save_every: Annotated[int, typer.Option("--save-every", help="Steps between checkpoints (0: only at the end).")] = 250,
    keep: Annotated[int, typer.Option("--keep", help="Newest step_N checkpoints kept.")] = 2,
    stop_at: Annotated[Optional[int], typer.Option(
        "--stop-at", help="End this session after that step with a checkpoint (continue later with --resume).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the newest checkpoint in --out.")] = False,
    ship: Annotated[bool, typer.Option(
        "--ship", help="When done, copy final/ (as bf16) into the package: yoco_core/weights/<preset>/.")] = False,
) -> None:
    """Train a preset on synthetic long-context data (needles, kv lookups, copying), resumably."""
    cfg = _config(model=model, steps=steps, out=out, device=device, dtype=dtype, seed=seed, lr=lr,  # checked
                  min_lr_ratio=min_lr_ratio, warmup=warmup, weight_decay=weight_decay, batch_tokens=batch_tokens,
                  curriculum=curriculum, mix_lengths=mix_lengths, mix=mix, needle_order=needle_order,
                  needle_formats=needle_formats, needle_counts=needle_counts, lm_weight=lm_weight, set_=set_,
                  log_every=log_every, save_every=save_every, keep=keep, stop_at=stop_at)
    from yoco_core import train as tr

    with lock_results(cfg.out, command_line()):        # one writer per run folder
        write_command(Path(cfg.out), command_line())
        result = _run(cfg, resume, stop_at)
    _print_summary(result, cfg)
    if ship:
        if result.step < cfg.steps:
            fail(f"--ship: the run stopped at step {result.step} of {cfg.steps}; finish it first (--resume)")
        try:
            dest = tr.ship(result.out)
        except tr.TrainError as e:
            fail(str(e))
        console.print(f"shipped: {dest} (load_model({dest.name!r}) now loads these weights)", highlight=False, markup=False)


def _run(cfg, resume: bool, stop_at):
    """Train with the progress bar; a refusal is one line (exit 2), SIGINT / SIGTERM keep a
    checkpoint and exit 130 / 143."""
    from yoco_core import train as tr

    display = _Display(cfg)
    try:
        return tr.train(cfg, resume=resume, stop_at=stop_at, on_start=display.on_start, on_step=display.on_step,
                        on_log=display.on_log)
    except tr.TrainError as e:
        fail(str(e))
    except tr.Interrupted as e:
        display.progress.stop()
        exit_interrupted(f"checkpoint step_{e.step} kept, --resume continues", e.signum)
    finally:
        display.progress.stop()


def _config(*, model, steps, out, device, dtype, seed, lr, min_lr_ratio, warmup, weight_decay, batch_tokens,
            curriculum, mix_lengths, mix, needle_order, needle_formats, needle_counts, lm_weight, set_, log_every,
            save_every, keep, stop_at):
    """The checked ``TrainConfig`` of the options (every check before any work; exit 2 if bad)."""
    from yoco_core import train as tr
    from yoco_core.synthetic import parse_mix, parse_needle_counts, parse_needle_formats

    if steps < 1:
        fail(f"--steps {steps}: must be at least 1")
    if stop_at is not None and stop_at < 1:
        fail(f"--stop-at {stop_at}: must be at least 1")
    lengths = parse_size_list(curriculum)
    if min(lengths) < 8:
        fail(f"--curriculum {curriculum}: lengths must be at least 8 tokens")
    tokens = parse_size(batch_tokens)
    try:
        mixture = parse_mix(mix)
        formats, counts = parse_needle_formats(needle_formats), parse_needle_counts(needle_counts)
        overrides = tr.parse_overrides(set_ or [])
    except (ValueError, tr.TrainError) as e:
        fail(str(e))
    dev = resolve_device(device)
    amp = _amp(dtype)
    out = out or Path(f"runs/train-{Path(model).name.lower()}")
    try:
        cfg = tr.TrainConfig(
            model=model, overrides=overrides, steps=steps, out=str(out), device=dev, amp=amp, seed=seed, lr=lr,
            min_lr_ratio=min_lr_ratio, warmup=warmup, weight_decay=weight_decay, batch_tokens=tokens,
            curriculum=lengths, mix_lengths=mix_lengths, mix=mixture, needle_order=needle_order.strip().lower(),
            needle_formats=formats, needle_counts=counts,
            lm_weight=lm_weight, log_every=log_every, save_every=save_every, keep=keep, command=command_line())
    except tr.TrainError as e:
        fail(str(e))
    ensure_out_dir(out)
    return cfg


class _Display:
    """A rich progress bar (step, smoothed loss, answer accuracy, lr, tokens/s) fed by the
    trainer's callbacks; without a terminal (a log file, a remote job) the bar cannot redraw, so
    about 20 plain lines are printed as well."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
        self.task_id = None
        self.smooth: dict = {}                   # log values smoothed over the rows
        self.plain_every = max(1, cfg.steps // cfg.log_every // 20)
        self.n_logged = 0

    def on_start(self, info: dict) -> None:
        cfg = self.cfg
        where = f"resuming at step {info['start']}" if info["start"] else "from scratch"
        console.print(f"{info['model']} ({info['arch']}, {info['params'] / 1e6:.2f}M params) on {info['device']}, "
                      f"{info['amp']}, {where}; {info['backend']}; "
                      f"curriculum {','.join(format_size(x) for x in cfg.curriculum)} x "
                      f"{format_size(cfg.batch_tokens)} tokens/step -> {info['out']}", highlight=False, markup=False)
        self.progress.start()
        self.task_id = self.progress.add_task("train", total=cfg.steps, completed=info["start"], stats="")

    def on_step(self, step: int) -> None:
        self.progress.update(self.task_id, completed=step)

    def on_log(self, row: dict) -> None:
        from yoco_core.synthetic import TASKS

        smooth = self.smooth
        for key in ("loss", "answer_acc", *(f"{t}_acc" for t in TASKS)):
            if row.get(key, "") != "":
                smooth[key] = row[key] if key not in smooth else 0.7 * smooth[key] + 0.3 * row[key]
        tasks = "".join(f" {t} {smooth[t + '_acc']:.2f}" for t in TASKS if t + "_acc" in smooth)
        stats = (f"len {format_size(row['length'])} loss {smooth['loss']:.3f} acc {smooth['answer_acc']:.3f}"
                 f"{tasks} lr {float(row['lr']):.2e} {row['tokens_per_s'] / 1e3:,.0f}k tok/s")
        self.progress.update(self.task_id, stats=stats)
        self.n_logged += 1
        if not console.is_terminal and (self.n_logged % self.plain_every == 0 or row["step"] == self.cfg.steps):
            console.print(f"step {row['step']}/{self.cfg.steps} {stats} ({row['seconds']:.0f} s)", highlight=False)


def _print_summary(result, cfg) -> None:
    """The one-line summary of a session (done, or stopped at a checkpoint)."""
    last = result.last or {}
    tok_s = result.tokens / result.seconds if result.seconds else 0.0
    head = "stopped" if result.step < cfg.steps else "done"
    console.print(
        f"{head}: step {result.step}/{cfg.steps}, {result.tokens / 1e6:.1f}M tokens in {result.seconds:.0f} s "
        f"({tok_s / 1e3:,.0f}k tok/s); last loss {last.get('loss', 'n/a')}, answer loss "
        f"{last.get('answer_loss', 'n/a')}, answer acc {last.get('answer_acc', 'n/a')}, needle acc "
        f"{last.get('needle_acc') or 'n/a'} -> {result.final}",
        highlight=False, markup=False, soft_wrap=True)
