"""`yoco profile`: prefill latency, decode latency and throughput, memory and cache size of YOCO
against the Transformer (and the HF / fla peers) over contexts and batch sizes.

``-m/--model SPEC`` profiles a model folder instead of the presets: ``hf:DIR`` (a transformers
folder) or one of our checkpoint folders, its real weights and config. There ``--arch`` means:
``transformer`` our native path on its weights (``load_model``), ``hf`` transformers running the
same folder (``AutoModelForCausalLM``, SDPA), ``yoco`` a YOCO with random weights of its shape
(its note says what differs); ``auto`` is transformer,hf. The rows' ``model`` column names the
folder (``hf:X``, ``transformers:X``, ``yoco-like:X``) and ``size`` is its name. A preset name as
SPEC is the ``--size`` path (its arch and size).

One row per (arch, size, ctx, batch) cell is appended to ``OUT/profile.csv`` (``schemas.PROFILE``)
as soon as the cell is measured; ``--resume`` skips cells already there with the same setting
(dtype, mode, decode steps, prefills timed, chunk, device: ``schemas.PROFILE.key``). One run per ``--out`` at a
time (``schemas.lock_results``); Ctrl-C / SIGTERM stop after the cell in flight (``interrupts``). Out-of-memory is a
result: the cell is recorded as ``oom`` with the memory it would have needed, and the sweep goes
on; a cell whose analytic estimate exceeds the device's memory, or that is at least as large in
context and batch as a cell of the same model that already ran out of memory, is recorded as
``skipped``. A CUDA error that loses the CUDA context (an illegal memory access: every later CUDA
call would raise it again) is the cell's ``error`` row, written like any other, and the run stops
there: one line on stderr ("CUDA error in ARCH ctx N batch B: ...; the CUDA context is lost: rows
so far are in OUT/profile.csv, run again with --resume") and exit code 1; ``--resume`` continues
after that cell in a new process.

``--throughput`` is the YOCO paper's throughput protocol (arXiv 2405.05254, Fig. 6): per (arch,
size, ctx) the largest batch that fits (the analytic memory estimate against the device's memory
or ``--memory-gb``, at most ``--batch``, which is one number there: a cap; auto: none on cuda, 8
on the CPU, where running out of memory is the OOM killer, not an error), confirmed by running
it (an out-of-memory is an ``oom`` row and the batch steps down), prefilled, then ``--gen-tokens``
decoded (default 1024 there); throughput counts the generated tokens only, batch x gen-tokens (not
the prompts'), over the prefill and decode time together. A batch the cap limited says so (the
row's ``batch_cap`` column and note; ``yoco report`` marks it).
``--timed-steps N`` runs and times only N of the decode steps and extrapolates the rest (the row's
note says so). ``--timed-prefills N`` prefills the batch one sequence at a time, as a server with
chunked prefill does: N of them are timed (after a batch-1 warm-up), the batch's prefill time is
batch x their median, and the batch decodes from a cache of random values as ``--decode-only``
does (``sweep._one_at_a_time``; the row's ``timed_prefills`` column and note say so); the batch is
the largest the one-at-a-time memory estimate fits (the batch's cache beside one sequence's chunk).
``--resume`` skips a context whose search has ended (a row that is not an out-of-memory, or one at
batch 1), and continues a search below the batches that ran out of memory.
``--tp N`` runs the sweep as N processes (``yoco_cli.parallel.launch``), one tensor-parallel group
(ours only: arch yoco and transformer; hf and fla are refused, as is a shape whose heads do not
divide): every rank builds the same model (same seed), keeps its share of the heads
(``apply_tensor_parallel``) and runs each cell with the others; rank 0 holds the folder's lock,
reads what is done and shares it, times the cells (the collectives keep the ranks together) and
writes the rows, which say ``gpus`` N and ``parallel`` ``tpN`` (part of the resume key: never one
cell with a one-process row); their memory estimate, cache and decode bytes are one rank's. A
Ctrl-C that reaches any rank stops the group before its next row (agreed over it).
``--dtype fp8`` (profile only; the other commands refuse it as an unknown dtype): our models
(arch yoco, transformer, presets of ``--size``) built in the compute dtype (``auto``'s: bf16 on
cuda, fp32 on the CPU), then every projection but the LM head quantized to float8 e4m3 with a scale
per output channel (``yoco_core.quant.quantize_fp8``); the rows say dtype ``fp8``, their memory
estimate and decode bytes count those weights at a byte each (``analytic``'s ``fp8``), and the
matmul ceiling is ``torch._scaled_mm``'s on float8 operands. Refused (one line) with hf or fla in
``--arch``, with ``-m`` folders (not yet) and with ``--tp`` above 1.
The measurement and the sweep policy live in ``yoco_core.perf`` (``sweep.Plan``, ``sweep.sweep``);
the figures in ``plots.py``.
"""
from __future__ import annotations

import math
from typing import Annotated, Optional

import typer
from rich.markup import escape

from . import interrupts, parallel, schemas
from .options import (DeviceOpt, OutOpt, ResumeOpt, SeedOpt, console, ensure_out_dir, fail,
                      format_size, parse_chunk, parse_size_list, resolve_device)

CTX_DOUBLING_FROM = 4096
DEFAULT_CTX = {"cuda": "4k,16k,64k,256k,1m", "cpu": "1k,4k,16k"}
DEFAULT_SIZE = {"cuda": "3b", "cpu": "tiny"}
DEFAULT_GEN = {"full": 128, "throughput": 1024}            # --gen-tokens auto, by mode
THROUGHPUT_CAP = {"cuda": None, "cpu": 8}                 # --throughput's batch cap of --batch auto
LOST_EXIT = 1                        # exit code of a run stopped by a CUDA error that lost the context

DEFAULT_ARCHS = "yoco,transformer"

ArchOpt = Annotated[str, typer.Option(
    "--arch", help="Comma list of yoco, transformer, hf, fla; auto: yoco,transformer, or with -m the "
                   "folder's own runs (transformer,hf: ours and transformers on its weights).")]
FolderOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Profile a model folder: hf:DIR (a transformers folder) or one of our checkpoint "
                          "folders, its real weights (a preset name: that preset, as --size does).")]
SizeOpt = Annotated[str, typer.Option(
    "--size", help="Comma list of sizes (160m 400m 830m 1.4b 2.7b 3b 6.8b 13b tiny); auto: 3b on cuda, tiny on cpu; not with -m.")]
CtxOpt = Annotated[str, typer.Option(
    "--ctx", help="Comma list of context lengths (512, 4k, 128K, 1m); one size alone means a doubling "
                  "sweep from 4k up to it (with a trailing comma, 256k, just that one). auto: 4k,16k,64k,256k,1m on cuda, 1k,4k,16k on cpu.")]
BatchOpt = Annotated[str, typer.Option(
    "--batch", help="Comma list of batch sizes (auto: 1). With --throughput one number, the largest batch tried "
                    "(auto: no cap on cuda, 8 on the CPU).")]
GenOpt = Annotated[Optional[int], typer.Option(
    "--gen-tokens", help="Decode steps per cell, each timed (median reported); default 128, with --throughput the "
                         "tokens generated per sequence, default 1024.")]
ChunkOpt = Annotated[str, typer.Option(
    "--chunk-size", help="Prefill chunk in tokens; auto: 8k for yoco, 64k for transformer, unchunked for hf and "
                         "fla (whose cache takes one token per call after the first); 0: unchunked for all.")]
SelfDecOpt = Annotated[str, typer.Option("--self-decoder", help="Self-decoder of arch yoco: gret or swa.")]
RepeatsOpt = Annotated[int, typer.Option("--repeats", help="Least prefills timed per cell; short ones are repeated up to 5 times within 1 s (median reported).")]
DecodeOnlyOpt = Annotated[bool, typer.Option(
    "--decode-only", help="Skip the prefill: decode from a cache of random values at each context "
                          "(same cost per step), for decode-rate sweeps over large batches. yoco and transformer "
                          "only.")]
ThroughputOpt = Annotated[bool, typer.Option(
    "--throughput", help="The YOCO paper's throughput protocol: per context the largest batch that fits (by the "
                         "memory estimate, stepped down on out-of-memory), prefilled, then --gen-tokens decoded; "
                         "tokens/s = the batch x gen-tokens generated tokens (prompts not counted) / (prefill + "
                         "decode time). yoco and transformer only.")]
TimedStepsOpt = Annotated[Optional[int], typer.Option(
    "--timed-steps", help="With --throughput: run and time only this many of the --gen-tokens decode steps; the "
                          "decode time of all of them is extrapolated by the analytic bytes per step (noted per row).")]
TimedPrefillsOpt = Annotated[Optional[int], typer.Option(
    "--timed-prefills", help="With --throughput: prefill the batch one sequence at a time, time this many of them "
                             "(after a batch-1 warm-up) and take batch x their median as its prefill time; the "
                             "batch then decodes from a cache of random values, as --decode-only (noted per row).")]
ColdAfterOpt = Annotated[Optional[float], typer.Option(
    "--cold-after", help="Seconds: a cell whose warm-up prefill (the same prefill, untimed otherwise) takes longer "
                         "is not prefilled again: its prefill time is the warm-up's, one-time builds included "
                         "(noted per row; compare warmup_prefill_s and prefill_s of the shorter cells), for cells "
                         "too long to prefill twice. Default: every cell is prefilled after its warm-up.")]
FP8 = "fp8"                           # --dtype fp8: profile's own (not in yoco_core.dtypes' shared table)
ProfileDtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="fp32, bf16, fp16 or fp8 (auto: bf16 on cuda, fp32 on cpu). fp8: our models (yoco, "
                    "transformer) in auto's dtype with every projection but the LM head in float8 e4m3 "
                    "(yoco_core.quant.quantize_fp8); not with hf / fla, -m or --tp.")]
MemoryOpt = Annotated[Optional[float], typer.Option(
    "--memory-gb", help="Memory a cell may take, GB (1e9 bytes); default: the device's (a GPU's total, the CPU's "
                        "available RAM). Cells estimated above it are skipped; --throughput picks its batches by it.")]


def _parse_choices(text: str, allowed, option: str) -> list[str]:
    """A comma list of ``allowed`` names (case-insensitive, duplicates dropped), else a one-line error."""
    names = [a.strip().lower() for a in text.split(",") if a.strip()]
    if not names:
        fail(f"empty {option} list")
    for a in names:
        if a not in allowed:
            fail(f"unknown {option.removeprefix('--')} {a!r} (use {', '.join(allowed)})")
    return list(dict.fromkeys(names))


def _fmt(x, digits: int = 3) -> str:
    if x is None or x == "" or x != x:
        return "-"
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def profile(
    model: FolderOpt = None,
    arch: ArchOpt = "auto",
    size: SizeOpt = "auto",
    ctx: CtxOpt = "auto",
    batch: BatchOpt = "auto",
    gen_tokens: GenOpt = None,
    chunk_size: ChunkOpt = "auto",
    self_decoder: SelfDecOpt = "gret",
    repeats: RepeatsOpt = 1,
    decode_only: DecodeOnlyOpt = False,
    throughput: ThroughputOpt = False,
    timed_steps: TimedStepsOpt = None,
    timed_prefills: TimedPrefillsOpt = None,
    cold_after: ColdAfterOpt = None,
    memory_gb: MemoryOpt = None,
    device: DeviceOpt = "auto",
    dtype: ProfileDtypeOpt = "auto",
    out: OutOpt = "runs/profile",
    resume: ResumeOpt = False,
    seed: SeedOpt = 0,
    tp: Annotated[int, parallel.tp_option(
        "Rank 0 times the cells and writes the rows (gpus N, parallel tpN).")] = 1,
) -> None:
    """Profile prefill, decode and memory over contexts and batch sizes (CSV + plots)."""
    import contextlib
    import dataclasses

    from yoco_core.dtypes import name_of
    from yoco_core.parallel import data
    from yoco_core.perf import sweep

    plan = _plan(model, arch, size, ctx, batch, gen_tokens, chunk_size, self_decoder, repeats, decode_only,
                 throughput, timed_steps, device, dtype, seed, timed_prefills, cold_after)
    _check_tensor_parallel(plan, tp)             # before any work
    memory = _memory_option(memory_gb)
    out = ensure_out_dir(out)
    parallel.launch(None, device, tp)      # --tp N: this command as N processes, then exit
    w = parallel.world_or_fail()
    if w.size != tp:
        fail(f"--tp {tp}: profile runs one tensor-parallel group of {tp} process(es), not {w.size}; "
             f"start it with --tp alone (or torchrun --nproc-per-node {tp})")
    try:
        dev = data.device_for(plan.device, w)
    except ValueError as e:
        fail(str(e))
    with data.process_group(w), contextlib.ExitStack() as held:
        rows = parallel.opened_by_main(w, held, out, lambda: _existing_rows(out, resume))
        held.enter_context(interrupts.graceful())
        plan = dataclasses.replace(plan, device=dev, tp=tp, group=parallel.tensor_group(w, tp, dev))
        machine = sweep.Machine.of(plan.device, memory, sharing=tp)
        machine.memory = data.share(w, machine.memory)     # one budget: every rank skips the same cells
        cells = {_key(plan, machine, c): c for c in plan.cells()}
        done = {k for r in rows for k in _done_keys(r)}
        todo = [c for k, c in cells.items() if k not in done]
        if w.main:
            schemas.write_command(out, parallel.command_line())
            console.print(f"profile: {len(cells)} cells ({len(cells) - len(todo)} already in "
                          f"{schemas.PROFILE.path(out)}), device {machine.name}"
                          + (f" x{tp}, tensor parallel over {tp} processes" if tp > 1 else "")
                          + f", {plan.dtype_name}"
                          + (f" (float8 projections, the rest {name_of(plan.dtype)})" if plan.fp8 else ""),
                          highlight=False, markup=False)
        kept, stopped = 0, None
        if todo:
            machine.ceilings = _ceilings(plan) if w.main else None
            try:
                kept, stopped = _run(plan, todo, machine, _blockers(plan, machine, rows), out, w.main)
            except sweep.ContextLost as e:
                if w.main:
                    console.print(f"[bold red]error:[/] {escape(str(e))}: rows so far are in "
                                  f"{escape(str(schemas.PROFILE.path(out)))}, run again with --resume",
                                  highlight=False, soft_wrap=True, emoji=False)
                raise typer.Exit(LOST_EXIT) from None
        if stopped:
            if not w.main:               # rank 0 says so
                raise typer.Exit(interrupts.EXIT_CODES.get(stopped, 130))
            interrupts.finish(len(rows) + kept, stopped)
        if w.main:
            _report(out, set(cells))


def _check_tensor_parallel(plan, tp: int) -> None:
    """``--tp``: our archs only (one line for hf / fla), every model's heads, KV heads and FFN
    width divisible by ``tp`` (``tensor_parallel_problem``), before any work."""
    from yoco_core.parallel.tensor import tensor_parallel_problem
    from yoco_core.perf import runners

    if tp < 1:
        fail(f"--tp {tp}: must be at least 1")
    if tp == 1:
        return
    if plan.fp8:
        fail(f"--tp {tp}: --dtype fp8 does not run tensor parallel yet (use --tp 1, or another --dtype)")
    if foreign := [a for a in plan.archs if a not in runners.NATIVE_ARCHS]:
        fail(f"--tp {tp}: tensor parallel splits our own models (--arch yoco, transformer), not "
             f"{', '.join(foreign)}")
    for cell in plan.cells():
        cfg = plan.config_for(cell)
        if cfg is not None and (why := tensor_parallel_problem(cfg, tp)):
            fail(f"--tp {tp}: {why}")


def _plan(model, arch, size, ctx, batch, gen_tokens, chunk_size, self_decoder, repeats, decode_only, throughput,
          timed_steps, device, dtype, seed, timed_prefills=None, cold_after=None):
    """The options checked (a one-line error each) and made into a ``sweep.Plan``."""
    from yoco_core.config import SIZES
    from yoco_core.dtypes import from_name as dtype_from_name
    from yoco_core.perf import runners, sweep

    folder, arch, size, self_decoder = _model_option(model, arch, size, self_decoder)
    archs = _parse_choices(",".join(folder.default_archs()) if folder and arch == "auto"
                           else DEFAULT_ARCHS if arch == "auto" else arch, runners.ARCHS, "--arch")
    dev = resolve_device(device)
    kind = "cuda" if dev.startswith("cuda") else "cpu"
    sizes = [folder.label] if folder else _parse_choices(
        DEFAULT_SIZE[kind] if size.strip().lower() == "auto" else size, SIZES, "--size")
    ctxs = parse_size_list(DEFAULT_CTX[kind] if ctx.strip().lower() == "auto" else ctx,
                           doubling_from=CTX_DOUBLING_FROM)
    if throughput and decode_only:
        fail("--throughput and --decode-only exclude each other (--throughput prefills every batch)")
    batches, cap, cap_auto = _batch_option(batch, throughput, kind)
    gen_tokens = DEFAULT_GEN["throughput" if throughput else "full"] if gen_tokens is None else gen_tokens
    if gen_tokens < 1:
        fail(f"bad --gen-tokens {gen_tokens}: must be at least 1")
    if timed_steps is not None and not throughput:
        fail("--timed-steps goes with --throughput (the other modes time every --gen-tokens step)")
    if timed_steps is not None and not 1 <= timed_steps <= gen_tokens:
        fail(f"bad --timed-steps {timed_steps}: must be between 1 and --gen-tokens ({gen_tokens})")
    if repeats < 1:
        fail(f"bad --repeats {repeats}: must be at least 1")
    if timed_prefills is not None and not throughput:
        fail("--timed-prefills goes with --throughput (the other modes prefill each batch whole)")
    if timed_prefills is not None and timed_prefills < 1:
        fail(f"bad --timed-prefills {timed_prefills}: must be at least 1")
    if timed_prefills is not None and repeats != 1:
        fail("--timed-prefills and --repeats exclude each other (--timed-prefills N times exactly N prefills)")
    if cold_after is not None and not cold_after >= 0:
        fail(f"bad --cold-after {cold_after:g}: must be seconds, at least 0")
    if cold_after is not None and decode_only:
        fail("--cold-after goes with a prefill (--decode-only cells have none)")
    chunk = parse_chunk(chunk_size, auto=sweep.AUTO_CHUNK)
    if self_decoder not in ("gret", "swa"):
        fail(f"unknown --self-decoder {self_decoder!r} (use gret or swa)")
    fp8 = dtype.strip().lower() == FP8
    try:
        torch_dtype = dtype_from_name("auto" if fp8 else dtype, dev)
    except ValueError:
        fail(f"unknown dtype {dtype!r} (use fp32, bf16, fp16, fp8 or auto)")
    if fp8:
        _check_fp8(folder, archs)
    if decode_only and set(archs) - set(runners.NATIVE_ARCHS):
        fail("--decode-only works with --arch yoco and transformer (our models' caches), not "
             + ", ".join(sorted(set(archs) - set(runners.NATIVE_ARCHS))))
    if throughput and set(archs) - set(runners.NATIVE_ARCHS):
        fail("--throughput works with --arch yoco and transformer (the memory estimate that picks the batch is "
             "our models'), not " + ", ".join(sorted(set(archs) - set(runners.NATIVE_ARCHS))))
    for a in archs:
        try:
            if folder:
                folder.check_arch(a)
            elif a in runners.PEER_ARCHS:
                runners.check_peer(a, dev)
        except (runners.PeerUnavailable, runners.FolderError) as e:
            fail(str(e))
    return sweep.Plan(archs=archs, sizes=sizes, ctxs=ctxs, batches=batches, gen_tokens=gen_tokens, chunk=chunk,
                      self_decoder=self_decoder, repeats=repeats, seed=seed, decode_only=decode_only,
                      throughput=throughput, timed_steps=timed_steps, timed_prefills=timed_prefills,
                      cold_after=cold_after, batch_cap=cap, batch_cap_auto=cap_auto,
                      device=dev, dtype=torch_dtype, folder=folder, fp8=fp8)


def _check_fp8(folder, archs: list[str]) -> None:
    """``--dtype fp8``: our models of the presets only (one line otherwise)."""
    from yoco_core.perf import runners

    if folder is not None:
        fail(f"--dtype fp8 does not run -m folders yet (-m {folder.spec}); it profiles the presets of --size "
             "(arch yoco, transformer)")
    if foreign := [a for a in archs if a not in runners.NATIVE_ARCHS]:
        fail(f"--dtype fp8 is for our models (arch yoco, transformer), not {', '.join(foreign)}")


def _batch_option(text: str, throughput: bool, kind: str) -> tuple[list[int], int | None, bool]:
    """``--batch``: (the batches, the throughput cap, whether that cap is auto's default). auto is
    batch 1, or with ``--throughput`` the device kind's cap; with ``--throughput`` one number is the
    cap and a list is refused."""
    auto = text.strip().lower() == "auto"
    if not throughput:
        return parse_size_list("1" if auto else text), None, False
    if auto:
        return [], THROUGHPUT_CAP[kind], THROUGHPUT_CAP[kind] is not None
    sizes = parse_size_list(text)
    if len(sizes) > 1:
        fail(f"--throughput picks each context's batch itself: --batch takes one number there (the largest batch "
             f"tried), not {text.strip()}")
    return [], sizes[0], False


def _memory_option(memory_gb: float | None) -> int | None:
    """``--memory-gb`` in bytes (None: the device's), else a one-line error (under one byte too:
    it would be a budget of 0 bytes)."""
    if memory_gb is None:
        return None
    if not math.isfinite(memory_gb) or memory_gb <= 0:
        fail(f"bad --memory-gb {memory_gb:g}: must be a positive number of GB")
    if memory_gb * 1e9 < 1:
        fail(f"bad --memory-gb {memory_gb:g}: under one byte (the smallest budget is 1e-9 GB)")
    return int(memory_gb * 1e9)


def _model_option(model, arch: str, size: str, self_decoder: str):
    """``-m SPEC`` read: (the folder or None, --arch, --size, --self-decoder) as the plan takes
    them; a preset name becomes its own arch (unless --arch says otherwise), size and self-decoder.
    -m with a --size is refused, one line."""
    from yoco_core.config import get_config
    from yoco_core.perf import runners

    arch = arch.strip().lower() or "auto"
    if model is None:
        return None, arch, size, self_decoder
    if size.strip().lower() != "auto":
        fail(f"-m/--model {model} and --size {size} exclude each other: the folder (or preset) sets the size; "
             "leave --size at auto")
    try:
        folder = runners.read_folder(model.strip())
    except runners.FolderError as e:
        fail(str(e))
    if folder is not None:
        return folder, arch, size, self_decoder
    preset = get_config(model.strip())
    return (None, preset.arch if arch == "auto" else arch, preset.name.rsplit("-", 1)[1],
            preset.self_decoder if preset.arch == "yoco" else self_decoder)


def _key(plan, machine, cell) -> tuple[str, ...]:
    """The resume key of a cell of ``plan`` on ``machine`` (``schemas.PROFILE``'s: what the row
    of that cell will say in each key column)."""
    from dataclasses import asdict

    return schemas.PROFILE.key_of({**asdict(cell), "dtype": plan.dtype_name, "mode": plan.mode,
                                   "gen_tokens": plan.gen_tokens, "timed_steps": plan.steps,
                                   "timed_prefills": plan.timed_prefills,
                                   "chunk_size": plan.chunk_for(cell), "device": machine.name,
                                   "gpus": plan.tp, "parallel": plan.parallel})


def _done_keys(row: dict) -> list[tuple[str, ...]]:
    """The cells a row completes: its own; for a throughput row that ended its batch search (not
    an out-of-memory, or one at batch 1, or one of prefilling a single sequence), also its
    context's throughput cell (batch 0)."""
    from yoco_core.perf.notes import ONE_SEQUENCE

    keys = [schemas.PROFILE.key_of(row)]
    if row["mode"] == "throughput" and (row["status"] != "oom" or int(row["batch"]) == 1
                                        or ONE_SEQUENCE in row.get("note", "")):
        keys.append(_cell_key(row))
    return keys


def _cell_key(row: dict) -> tuple[str, ...]:
    """The key of the plan cell a row belongs to (a throughput row: its context's, batch 0)."""
    return schemas.PROFILE.key_of({**row, "batch": 0} if row["mode"] == "throughput" else row)


def _blockers(plan, machine, rows: list[dict]):
    """The out-of-memory blockers of the rows measured as this plan measures (same dtype, mode,
    decode steps, chunk, device and layout): an OOM with another setting says nothing about this one."""
    from yoco_core.perf import sweep

    def same_setting(r) -> bool:
        cell = sweep.Cell(str(r["arch"]), str(r["size"]), str(r["model"]), int(r["batch"]), int(r["ctx"]))
        return schemas.PROFILE.key_of(r) == _key(plan, machine, cell)

    return sweep.Blockers.from_rows([r for r in rows if r["status"] == "oom" and same_setting(r)],
                                    plan.dtype_name)


def _existing_rows(out, resume: bool) -> list[dict]:
    """The rows already in ``OUT/profile.csv``, read once: with ``--resume`` the sweep continues
    them (skips their cells, keeps their out-of-memory blockers; a cut-off last row is repaired
    first); without it the file is refused."""
    if not resume:
        schemas.PROFILE.open_sweep(out, resume=False)      # refuses a file already there
        return []
    schemas.PROFILE.repair(out)
    path = schemas.PROFILE.path(out)
    if not path.exists() or path.stat().st_size == 0:
        return []
    return schemas.PROFILE.read(path).to_dict("records")


def _ceilings(plan):
    from yoco_core.perf.hardware import measure_ceilings

    console.print("measuring ceilings (matmul rate, copy and read bandwidth) ...", highlight=False)
    ceil = measure_ceilings(plan.device, plan.dtype, fp8=plan.fp8)
    what = "fp8 _scaled_mm" if plan.fp8 else plan.dtype_name
    console.print(f"ceilings: matmul {ceil.matmul_tflops:.3g} TFLOP/s ({what}, n={ceil.matmul_n}), "
                  f"copy {ceil.copy_tbs:.3g} TB/s (read + write), read {ceil.read_tbs:.3g} TB/s", highlight=False)
    return ceil


def _run(plan, todo, machine, blockers, out, writes: bool = True) -> tuple[int, int | None]:
    """The sweep behind a progress bar: each record appended to the CSV as soon as it is known;
    a SIGINT / SIGTERM stops it before the next cell (with ``--tp``: the signal of any rank,
    ``parallel.stop_agreed``). Returns the rows written and the signal that stopped it (None: it
    ran to the end). A lost CUDA context
    (``sweep.ContextLost``): its cell's row is written, then the exception goes on. ``writes``:
    this rank writes and shows (a tensor-parallel group's first; the others only compute)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from yoco_core.perf import sweep

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False, disable=not writes) as progress:
        task = progress.add_task("profile", total=len(todo))

        def show(phase, cell):
            if phase == "done":
                progress.advance(task)
                return
            what = f"batch {cell.batch}" if cell.batch else "batch: largest that fits"
            progress.update(task, description=f"building {escape(cell.model)}" if phase == "build"
                            else f"{cell.arch} {escape(cell.model)} ctx {format_size(cell.ctx)} {what}")

        records, kept, stopped = sweep.sweep(plan, todo, machine, blockers, on_event=show, tokens=format_size), 0, None
        try:
            while not (stopped := parallel.stop_agreed(plan.group, plan.device)) and \
                    (rec := next(records, None)) is not None:
                if not writes:
                    continue
                rec.date = schemas.utc_now()
                schemas.PROFILE.append_row(out, rec.row())
                kept += 1
                if rec.status != "ok":
                    colour = "red" if rec.status == "error" else "yellow"
                    progress.console.print(f"[{colour}]{rec.status}[/] {rec.arch} {escape(rec.model)} ctx "
                                           f"{format_size(rec.ctx)} batch {rec.batch}: {escape(rec.note)}",
                                           highlight=False)
        except sweep.ContextLost as e:
            if writes:
                e.record.date = schemas.utc_now()
                schemas.PROFILE.append_row(out, e.record.row())
            raise
        finally:
            records.close()             # the runner of the model in use is closed
    return kept, stopped


def _report(out, wanted: set) -> None:
    """The table of this run's cells (the last row of each) and the figures of the whole CSV."""
    path = schemas.PROFILE.path(out)
    if not path.exists():
        return
    df = schemas.PROFILE.read(path)
    last = {schemas.PROFILE.key_of(r): r for r in df.to_dict("records") if _cell_key(r) in wanted}
    _table(list(last.values()))

    from .plots import profile_figures, ratio_figures, throughput_figure
    from .reporting import layout_in_device

    df = layout_in_device(df)               # tp rows their own series
    with schemas.writing(out, "the figures"):
        written = list(profile_figures(df, out)) + list(ratio_figures(df, out)) + list(throughput_figure(df, out))
    console.print(f"wrote {path}" + (f" and {len(written)} figures: " + ", ".join(p.name for p in written)
                                     if written else ""), highlight=False, markup=False)


def _table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    table = Table(title="yoco profile")
    protocol = any(r["mode"] == "throughput" for r in rows)
    layouts = any(str(r.get("parallel", "") or "") for r in rows)
    names = ("arch", "model", *(("gpus",) if layouts else ()), "ctx", "batch", "status", "prefill s", "decode ms",
             "tok/s", *(("gen s", "throughput tok/s") if protocol else ()), "peak GB")
    for name in names:
        table.add_column(name, justify="left" if name in ("arch", "model", "status") else "right")
    colour = {"ok": "green", "oom": "red", "skipped": "yellow", "error": "red"}
    order = {}
    for r in rows:
        order.setdefault(r["arch"], len(order))

    def place(r):                    # a throughput context's batches in the order they were tried
        tried = r["mode"] == "throughput"
        return (order[r["arch"]], str(r["model"]), tried, 0 if tried else int(r["batch"]), int(r["ctx"]),
                -int(r["batch"]))

    rows = sorted(rows, key=place)
    for r in rows:
        st = str(r["status"])
        table.add_row(str(r["arch"]), escape(str(r["model"])),
                      *((f"{int(r['gpus'])} ({r['parallel'] or '-'})",) if layouts else ()),
                      format_size(int(r["ctx"])), str(int(r["batch"])),
                      f"[{colour.get(st, 'white')}]{st}[/]", _fmt(r["prefill_s"]), _fmt(r["decode_ms"]),
                      _fmt(r["decode_tok_s"]),
                      *((_fmt(r["decode_s"]), _fmt(r["throughput_tok_s"])) if protocol else ()),
                      _fmt(r["peak_alloc_gb"]) if st == "ok" else (f"~{_fmt(r['est_gb'])} est" if r["est_gb"] == r["est_gb"] else "-"))
    con = Console()
    if not con.is_terminal:          # piped or captured: wide enough that no column is cut
        con = Console(width=max(con.width, 110))
    con.print(table)
