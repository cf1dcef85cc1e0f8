"""Our native path against transformers on real-sized Hugging Face folders (one GPU, ~9 minutes).

    python3 scripts/bench_hf_models.py --out DIR [--ctx 4k,32k,128k,] [--models qwen2.5-7b,llama-3.1-8b]
    python3 scripts/bench_hf_models.py --out DIR --smoke        # tiny shapes, ctx 64, on the CPU

For each model: a folder of its shape (Qwen2.5-7B: hidden 3584, 28 layers, 28 heads over 4 KV
heads, FFN 18944, vocabulary 152064, q/k/v biases, RoPE base 1e6; Llama-3.1-8B: hidden 4096, 32
layers, 32 heads over 8 KV heads, FFN 14336, vocabulary 128256, llama3 RoPE scaling) is built by
transformers with random bf16 weights on the GPU (``_from_config``: normal, std 0.02) and saved
with ``save_pretrained`` under ``--work`` (fast local disk, ~15 GB each, removed afterwards); then
``yoco profile -m hf:DIR --arch transformer,hf`` measures our native path and transformers (SDPA)
on that folder. Each step runs in its own process with its share of ``--budget-s`` (a SIGTERM
at the end of it: the profile stops after the cell in flight and keeps its rows), so one model
failing or running long never loses the other's results.

What ``--out`` holds at the end (at most 6 files): ``summary.csv`` (the table printed last: per
model and context our prefill and transformers', their ratio, target <= 0.9; our decode step and
theirs, the speed-up, target >= 5; both peaks), ``<model>.csv`` (each model's profile.csv),
``figures.tar`` (each model's profile folder: CSV, figures, command), ``bench.log`` (every
step's output).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (transformers class prefix, config arguments, RoPE parameters)
SHAPES = {
    "qwen2.5-7b": ("Qwen2", dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                                 num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                                 max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                 use_sliding_window=False),
                   {"rope_type": "default", "rope_theta": 1e6}),
    "llama-3.1-8b": ("Llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                                   max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False),
                     {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                      "original_max_position_embeddings": 8192, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
}
# --smoke: the same families and features at a few thousand parameters
SMOKE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, vocab_size=512, max_position_embeddings=256)
GRACE_S = 30                  # between the SIGTERM at a step's end and its kill
TARGET_PREFILL, TARGET_DECODE = 0.9, 5.0


def log(out: Path, text: str) -> None:
    """A line on stdout and in bench.log."""
    print(text, flush=True)
    with open(out / "bench.log", "a") as f:
        f.write(text + "\n")


def log_step(out: Path, what: str, rc: int | None, seconds: float) -> None:
    """The step's outcome; where it failed, the end of its output too (the rest is in bench.log)."""
    if rc not in (0, None):
        lines = (out / "bench.log").read_text(errors="replace").splitlines()
        print("\n".join("    " + ln[:200] for ln in lines[-12:]), flush=True)
    log(out, f"{what}: {'no time left to start' if rc is None else f'exit {rc}'}, {seconds:.0f} s")


# -- one model's folder (run in its own process: --save) ------------------------------------------
def hf_config(name: str, smoke: bool):
    """transformers' config of ``name``'s shape (tiny with ``smoke``), RoPE in either release's form."""
    import transformers

    prefix, kw, rope = SHAPES[name]
    cls = getattr(transformers, f"{prefix}Config")
    if smoke:
        kw = {**kw, **SMOKE}
        rope = {**rope, "original_max_position_embeddings": 64} if rope["rope_type"] == "llama3" else rope
    if "rope_parameters" in (getattr(cls, "__dataclass_fields__", None) or {}):
        return cls(**kw, rope_parameters=rope)
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    return cls(**kw, rope_theta=rope["rope_theta"], rope_scaling=None if scaling["rope_type"] == "default" else scaling)


def save_folder(name: str, folder: Path, smoke: bool) -> None:
    """Random weights of ``name``'s shape made on the GPU in bf16 (the CPU in fp32 with ``smoke``),
    saved with ``save_pretrained`` into ``folder``."""
    import torch
    import transformers

    cfg = hf_config(name, smoke)
    cls = getattr(transformers, f"{SHAPES[name][0]}ForCausalLM")
    device, dtype = ("cpu", torch.float32) if smoke else ("cuda", torch.bfloat16)
    t0 = time.perf_counter()
    with torch.device(device):
        model = cls._from_config(cfg, dtype=dtype)
    built = time.perf_counter()
    model.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in folder.iterdir()) / 1e9
    print(f"{name}: {n / 1e9:.2f}B parameters built in {built - t0:.1f} s, saved ({size:.1f} GB) in "
          f"{time.perf_counter() - built:.1f} s to {folder}", flush=True)


# -- the steps, each a process with a deadline --------------------------------------------------------
def run_step(argv: list[str], out: Path, until: float, grace: float) -> int | None:
    """Run ``argv`` (output into bench.log); SIGTERM at ``until - grace``, a kill ``grace`` later.
    Returns its exit status (None: it had no time left to start)."""
    start_by = until - grace
    if time.monotonic() >= start_by:
        return None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    with open(out / "bench.log", "a") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            return p.wait(timeout=max(1.0, start_by - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)          # yoco profile: stops after the cell in flight
            try:
                return p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                return p.wait()


def bench_model(name: str, args, out: Path, until: float) -> None:
    """Save ``name``'s folder, profile it (rows into ``out/name``), then fold that folder into
    ``<name>.csv`` and ``figures.tar`` and remove the weights."""
    folder = Path(args.work) / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    grace = 5 if args.smoke else GRACE_S
    t0 = time.monotonic()
    rc = run_step([sys.executable, str(Path(__file__).resolve()), "--save", name, "--folder", str(folder),
                   *(["--smoke"] if args.smoke else [])], out, until, grace)
    log_step(out, f"{name}: saving the folder", rc, time.monotonic() - t0)
    if rc == 0:
        device = ["--device", "cpu", "--dtype", "fp32"] if args.smoke else ["--device", "cuda", "--dtype", "bf16"]
        t1 = time.monotonic()
        rc = run_step([sys.executable, "-m", "yoco_cli.main", "profile", "-m", f"hf:{folder}", "--arch",
                       "transformer,hf", "--ctx", args.ctx, "--gen-tokens", str(args.gen_tokens), *device,
                       "--out", str(out / name), "--resume"], out, until, grace)
        log_step(out, f"{name}: profile", rc, time.monotonic() - t1)
    if not args.keep_folders:
        shutil.rmtree(folder, ignore_errors=True)
    fold(out, name)


def fold(out: Path, name: str) -> None:
    """``out/name/profile.csv`` to ``out/name.csv``, the whole folder appended to ``figures.tar``,
    then the folder removed: the results stay a few files."""
    src = out / name
    if not src.is_dir():
        return
    if (src / "profile.csv").is_file():
        shutil.copyfile(src / "profile.csv", out / f"{name}.csv")
    with tarfile.open(out / "figures.tar", "a") as tar:
        for f in sorted(src.iterdir()):
            if not f.name.startswith("."):          # not the results lock
                tar.add(f, arcname=f"{name}/{f.name}")
    shutil.rmtree(src)


# -- the summary ----------------------------------------------------------------------------------
COLUMNS = ("model", "ctx", "ours_prefill_s", "hf_prefill_s", "prefill_ratio", "ours_decode_ms", "hf_decode_ms",
           "decode_speedup", "ours_peak_gb", "hf_peak_gb", "ours_status", "hf_status", "targets")


def _num(text) -> float | None:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if x == x else None


def summary_rows(out: Path, names: list[str]) -> list[dict]:
    """Per model and context: ours (arch transformer) against transformers (arch hf), the last row
    of each; the ratios where both ran."""
    rows = []
    for name in names:
        path = out / f"{name}.csv" if (out / f"{name}.csv").is_file() else out / name / "profile.csv"
        if not path.is_file():
            rows.append({"model": name, "ours_status": "missing", "hf_status": "missing"})
            continue
        with open(path, newline="") as f:        # (a row cut off by a kill has no whole ctx)
            last = {(r["arch"], int(r["ctx"])): r for r in csv.DictReader(f) if str(r.get("ctx")).isdigit()}
        for ctx in sorted({c for _, c in last}):
            ours, hf = last.get(("transformer", ctx), {}), last.get(("hf", ctx), {})
            rows.append(_compare(name, ctx, ours, hf))
    return rows


def _compare(name: str, ctx: int, ours: dict, hf: dict) -> dict:
    op, hp = _num(ours.get("prefill_s")), _num(hf.get("prefill_s"))
    od, hd = _num(ours.get("decode_ms")), _num(hf.get("decode_ms"))
    ratio = op / hp if op and hp else None
    speedup = hd / od if od and hd else None
    verdict = "-" if ratio is None or speedup is None else (
        f"prefill {'ok' if ratio <= TARGET_PREFILL else 'MISS'} decode {'ok' if speedup >= TARGET_DECODE else 'MISS'}")
    return {"model": name, "ctx": ctx, "ours_prefill_s": op, "hf_prefill_s": hp, "prefill_ratio": ratio,
            "ours_decode_ms": od, "hf_decode_ms": hd, "decode_speedup": speedup,
            "ours_peak_gb": _num(ours.get("peak_alloc_gb")), "hf_peak_gb": _num(hf.get("peak_alloc_gb")),
            "ours_status": ours.get("status", "missing"), "hf_status": hf.get("status", "missing"), "targets": verdict}


def _cell(x, digits: int = 3) -> str:
    if x is None or x == "":
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def write_summary(out: Path, rows: list[dict]) -> None:
    """``summary.csv`` and the table on stdout (last)."""
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS} for r in rows)
    head = ("model", "ctx", "ours pre s", "hf pre s", f"ratio<={TARGET_PREFILL}", "ours dec ms", "hf dec ms",
            f"speedup>={TARGET_DECODE:g}", "ours GB", "hf GB", "status ours/hf")
    table = [head] + [(r["model"], _cell(r.get("ctx")), *(_cell(r.get(k)) for k in COLUMNS[2:10]),
                       f"{r['ours_status']}/{r['hf_status']}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    print("\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                    for row in table), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="results folder")
    p.add_argument("--ctx", default=None, help="contexts (yoco profile --ctx); default 4k,32k,128k, (--smoke: 64,)")
    p.add_argument("--models", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--gen-tokens", type=int, default=None, help="decode steps timed (default 32; --smoke: 2)")
    p.add_argument("--budget-s", type=float, default=530, help="wall seconds for every model together")
    p.add_argument("--work", default="/tmp/yoco-bench-hf", help="where the model folders are saved (fast local disk)")
    p.add_argument("--keep-folders", action="store_true", help="leave the saved model folders in --work")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, ctx 64: the whole path in seconds")
    p.add_argument("--save", help=argparse.SUPPRESS)          # internal: one model's folder (its own process)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.save:
        save_folder(args.save, Path(args.folder), args.smoke)
        return 0
    if not args.out:
        p.error("--out is required")
    names = [n.strip().lower() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not names:
        p.error(f"unknown --models {', '.join(unknown) or '(empty)'} (use {', '.join(SHAPES)})")
    args.ctx = args.ctx or ("64," if args.smoke else "4k,32k,128k,")
    args.gen_tokens = args.gen_tokens or (2 if args.smoke else 32)
    return bench(args, names)


def bench(args, names: list[str]) -> int:
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    free = shutil.disk_usage(Path(args.work).parent if not Path(args.work).exists() else args.work).free / 1e9
    log(out, f"bench: {', '.join(names)} at ctx {args.ctx}, {args.gen_tokens} decode steps, budget "
             f"{args.budget_s:.0f} s, {free:.0f} GB free for {args.work}")
    for i, name in enumerate(names):
        until = time.monotonic() + (deadline - time.monotonic()) / (len(names) - i)   # its share of what is left
        try:
            bench_model(name, args, out, until)
        except Exception as e:  # noqa: BLE001 - the next model still runs
            log(out, f"{name}: failed: {type(e).__name__}: {e}")
    write_summary(out, summary_rows(out, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
