"""`yoco profile`: prefill latency, decode latency and throughput, memory and cache size of YOCO
against the Transformer (and the HF / fla peers) over contexts and batch sizes.

One row per (arch, size, ctx, batch) cell is appended to ``OUT/profile.csv`` (``schemas.PROFILE``)
as soon as the cell is measured; ``--resume`` skips cells already there. Out-of-memory is a
result: the cell is recorded as ``oom`` with the memory it would have needed, and the sweep goes
on; a cell whose analytic estimate exceeds the device's memory, or that is at least as large in
context and batch as a cell that already ran out of memory, is recorded as ``skipped``.
The measurement logic lives in ``yoco_core.bench``; the figures in ``plots.py``.
"""
from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from . import schemas
from .options import (DeviceOpt, DtypeOpt, OutOpt, ResumeOpt, SeedOpt, command_line, console, fail,
                      format_size, parse_chunk, parse_size_list, resolve_device, resolve_dtype)

CTX_DOUBLING_FROM = 4096
DEFAULT_CTX = {"cuda": "4k,16k,64k,256k,1m", "cpu": "1k,4k,16k"}
DEFAULT_SIZE = {"cuda": "3b", "cpu": "tiny"}
GB = 1e9

ArchOpt = Annotated[str, typer.Option("--arch", help="Comma list of yoco, transformer, hf, fla.")]
SizeOpt = Annotated[str, typer.Option(
    "--size", help="Comma list of sizes (160m 400m 830m 1.4b 2.7b 3b 6.8b 13b tiny); auto: 3b on cuda, tiny on cpu.")]
CtxOpt = Annotated[str, typer.Option(
    "--ctx", help="Comma list of context lengths (512, 4k, 128K, 1m); one size alone means a doubling "
                  "sweep from 4k up to it (with a trailing comma, 256k, just that one). auto: 4k,16k,64k,256k,1m on cuda, 1k,4k,16k on cpu.")]
BatchOpt = Annotated[str, typer.Option("--batch", help="Comma list of batch sizes.")]
GenOpt = Annotated[int, typer.Option("--gen-tokens", help="Decode steps timed per cell (median reported).")]
ChunkOpt = Annotated[str, typer.Option(
    "--chunk-size", help="Prefill chunk in tokens; auto: 8k for yoco, unchunked for transformer, hf and "
                         "fla (whose cache takes one token per call after the first); 0: unchunked for all.")]
SelfDecOpt = Annotated[str, typer.Option("--self-decoder", help="Self-decoder of arch yoco: gret or swa.")]
RepeatsOpt = Annotated[int, typer.Option("--repeats", help="Least prefills timed per cell; short ones are repeated up to 5 times within 1 s (median reported).")]
DecodeOnlyOpt = Annotated[bool, typer.Option(
    "--decode-only", help="Skip the prefill: decode from a cache of random values at each context "
                          "(same cost per step), for throughput sweeps over large batches. yoco and transformer only.")]


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
    arch: ArchOpt = "yoco,transformer",
    size: SizeOpt = "auto",
    ctx: CtxOpt = "auto",
    batch: BatchOpt = "1",
    gen_tokens: GenOpt = 128,
    chunk_size: ChunkOpt = "auto",
    self_decoder: SelfDecOpt = "gret",
    repeats: RepeatsOpt = 1,
    decode_only: DecodeOnlyOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    out: OutOpt = "runs/profile",
    resume: ResumeOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Profile prefill, decode and memory over contexts and batch sizes (CSV + plots)."""
    from pathlib import Path

    from yoco_core.bench import ARCHS
    from yoco_core.config import SIZES

    archs = _parse_choices(arch, ARCHS, "--arch")
    dev = resolve_device(device)
    kind = "cuda" if dev.startswith("cuda") else "cpu"
    sizes = _parse_choices(DEFAULT_SIZE[kind] if size.strip().lower() == "auto" else size, SIZES, "--size")
    ctxs = parse_size_list(DEFAULT_CTX[kind] if ctx.strip().lower() == "auto" else ctx,
                           doubling_from=CTX_DOUBLING_FROM)
    batches = parse_size_list(batch)
    if gen_tokens < 1:
        fail(f"bad --gen-tokens {gen_tokens}: must be at least 1")
    if repeats < 1:
        fail(f"bad --repeats {repeats}: must be at least 1")
    chunk_opt = parse_chunk(chunk_size, auto=-1)      # -1: each arch's default
    if self_decoder not in ("gret", "swa"):
        fail(f"unknown --self-decoder {self_decoder!r} (use gret or swa)")
    torch_dtype = resolve_dtype(dtype, dev)
    out = Path(out)
    if decode_only and set(archs) - {"yoco", "transformer"}:
        fail("--decode-only works with --arch yoco and transformer (our models' caches), not "
             + ", ".join(sorted(set(archs) - {"yoco", "transformer"})))

    from yoco_core import bench

    for a in archs:
        if a in ("hf", "fla"):
            try:
                bench.check_peer(a, dev)
            except bench.PeerUnavailable as e:
                fail(str(e))
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a folder")
    dname = bench.dtype_name(torch_dtype)
    path = schemas.PROFILE.path(out)
    ooms: dict[tuple[str, str], list[tuple[int, int]]] = {}
    try:
        done = schemas.PROFILE.open_sweep(out, resume)
        if done:
            df = schemas.PROFILE.read(path)
            for r in df[(df["status"] == "oom") & (df["dtype"] == dname)].to_dict("records"):
                ooms.setdefault((r["arch"], r["size"]), []).append((int(r["ctx"]), int(r["batch"])))
    except schemas.SchemaError as e:
        fail(str(e))

    elem = bench.dtype_bytes(torch_dtype)
    reserve = bench.decode_reserve(gen_tokens)
    max_tokens = max(ctxs) + reserve
    cells = [(a, s, b, c) for a in archs for s in sizes for b in batches for c in ctxs]

    def key(cell):
        a, s, b, c = cell
        return schemas.PROFILE.key_of({"arch": a, "model": bench.model_name(a, s, self_decoder), "size": s,
                                       "ctx": c, "batch": b, "dtype": dname})

    todo = [cell for cell in cells if key(cell) not in done]

    schemas.write_command(out, command_line())
    bench.use_device(dev)
    dev_name = bench.device_name(dev)
    total_mem = bench.device_memory(dev)
    vers = bench.versions()
    console.print(f"profile: {len(cells)} cells ({len(cells) - len(todo)} already in {schemas.PROFILE.path(out)}), "
                  f"device {dev_name}, {dname}", highlight=False, markup=False)

    ceil = None
    if todo:
        console.print("measuring ceilings (matmul rate, copy bandwidth) ...", highlight=False)
        ceil = bench.measure_ceilings(dev, torch_dtype)
        console.print(f"ceilings: matmul {ceil.matmul_tflops:.3g} TFLOP/s ({dname}, n={ceil.matmul_n}), "
                      f"copy {ceil.copy_tbs:.3g} TB/s", highlight=False)

    _sweep(todo, out=out, dev=dev, torch_dtype=torch_dtype, dname=dname, elem=elem, reserve=reserve,
           max_tokens=max_tokens, chunk_opt=chunk_opt, self_decoder=self_decoder, gen_tokens=gen_tokens,
           repeats=repeats, seed=seed, ceil=ceil, dev_name=dev_name, total_mem=total_mem, vers=vers,
           ooms=ooms, decode_only=decode_only)

    if not path.exists():
        return
    df = schemas.PROFILE.read(path)
    wanted = {key(cell) for cell in cells}
    rows = [r for r in df.to_dict("records") if schemas.PROFILE.key_of(r) in wanted]
    last = {schemas.PROFILE.key_of(r): r for r in rows}
    _table(list(last.values()))

    from .plots import profile_figures, ratio_figures

    written = list(profile_figures(df, out)) + list(ratio_figures(df, out))
    console.print(f"wrote {path}" + (f" and {len(written)} figures: " + ", ".join(p.name for p in written)
                                     if written else ""), highlight=False, markup=False)


def _sweep(todo, *, out, dev, torch_dtype, dname, elem, reserve, max_tokens, chunk_opt, self_decoder,
           gen_tokens, repeats, seed, ceil, dev_name, total_mem, vers, ooms, decode_only=False) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from yoco_core import bench

    if not todo:
        return
    runner = None
    runner_id = None
    build_failed = ("error", "")
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("profile", total=len(todo))
            for a, s, b, c in todo:
                cfg = bench.size_config(a, s, self_decoder)
                chunk = 0 if decode_only else bench.effective_chunk(
                    bench.default_chunk(a) if chunk_opt == -1 else chunk_opt, c)
                analytic = bench.cell_analytics(cfg, c, b, elem, 1 if decode_only else chunk, reserve)
                progress.update(task, description=f"{a} {s} ctx {format_size(c)} batch {b}")
                row = {
                    "arch": a, "model": bench.model_name(a, s, self_decoder),
                    "size": s, "params": cfg.n_params(), "ctx": c, "batch": b,
                    "est_gb": analytic["est_bytes"] / GB,
                    "decode_gb_per_token": analytic["decode_bytes"] / GB,
                    "matmul_tflops": ceil.matmul_tflops if ceil else "", "copy_tbs": ceil.copy_tbs if ceil else "",
                    "gen_tokens": gen_tokens, "chunk_size": chunk, "device": dev_name, "dtype": dname,
                    "torch": vers["torch"], "triton": vers["triton"],
                }
                blocker = next(((c0, b0) for c0, b0 in ooms.get((a, s), []) if c >= c0 and b >= b0), None)
                if total_mem is not None and analytic["est_bytes"] > total_mem:
                    row.update(status="skipped", note=f"estimate {analytic['est_bytes'] / GB:.1f} GB exceeds the "
                                                      f"device's {total_mem / GB:.1f} GB")
                elif blocker is not None:
                    row.update(status="skipped", note=f"ctx {format_size(blocker[0])} batch {blocker[1]} "
                                                      "already ran out of memory")
                else:
                    if runner_id != (a, s):
                        if runner is not None:
                            runner.close()
                            runner = None
                        runner_id = (a, s)
                        progress.update(task, description=f"building {a} {s}")
                        try:
                            runner = bench.build_runner(a, s, dev, torch_dtype, max_tokens=max_tokens,
                                                        self_decoder=self_decoder, seed=seed)
                        except Exception as e:  # noqa: BLE001 - recorded on each of its cells
                            build_failed = ("oom" if bench.is_oom(e) else "error",
                                            "building the model: " + bench.first_line(e))
                            bench.release(dev)
                        progress.update(task, description=f"{a} {s} ctx {format_size(c)} batch {b}")
                    if runner is None:
                        row.update(status=build_failed[0], note=build_failed[1])
                    else:
                        row["params"] = runner.params
                        res = bench.run_cell(runner, c, b, gen_tokens, chunk or None, repeats, seed, decode_only)
                        row.update(status=res.status, note=res.note)
                        if res.status == "oom":
                            ooms.setdefault((a, s), []).append((c, b))
                        if res.status == "ok":
                            sh = bench.shares(analytic, res, ceil)
                            row.update(
                                prefill_s=res.prefill_s, decode_ms=res.decode_ms,
                                decode_tok_s=b * 1e3 / res.decode_ms if res.decode_ms else "",
                                peak_alloc_gb=res.peak_alloc / GB if res.peak_alloc is not None else "",
                                peak_reserved_gb=res.peak_reserved / GB if res.peak_reserved is not None else "",
                                cache_gb=res.cache_bytes / GB if res.cache_bytes is not None else "",
                                **{k: ("" if v is None else v) for k, v in sh.items()})
                row["date"] = schemas.utc_now()
                schemas.PROFILE.append_row(out, row)
                if row["status"] != "ok":
                    colour = "red" if row["status"] == "error" else "yellow"
                    progress.console.print(f"[{colour}]{row['status']}[/] {a} {s} ctx {format_size(c)} "
                                           f"batch {b}: {escape(row['note'])}", highlight=False)
                progress.advance(task)
    finally:
        if runner is not None:
            runner.close()


def _table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    table = Table(title="yoco profile")
    for name in ("arch", "size", "ctx", "batch", "status", "prefill s", "decode ms", "tok/s", "peak GB"):
        table.add_column(name, justify="left" if name in ("arch", "size", "status") else "right")
    colour = {"ok": "green", "oom": "red", "skipped": "yellow", "error": "red"}
    order = {}
    for r in rows:
        order.setdefault(r["arch"], len(order))
    rows = sorted(rows, key=lambda r: (order[r["arch"]], str(r["size"]), int(r["batch"]), int(r["ctx"])))
    for r in rows:
        st = str(r["status"])
        table.add_row(str(r["arch"]), str(r["size"]), format_size(int(r["ctx"])), str(int(r["batch"])),
                      f"[{colour.get(st, 'white')}]{st}[/]", _fmt(r["prefill_s"]), _fmt(r["decode_ms"]),
                      _fmt(r["decode_tok_s"]),
                      _fmt(r["peak_alloc_gb"]) if st == "ok" else (f"~{_fmt(r['est_gb'])} est" if r["est_gb"] == r["est_gb"] else "-"))
    con = Console()
    if not con.is_terminal:          # piped or captured: wide enough that no column is cut
        con = Console(width=max(con.width, 110))
    con.print(table)
