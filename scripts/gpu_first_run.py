"""Seconds from process start to the first scored prompt of `yoco needle` on the GPU, with a cold
and then a warm Triton cache (issue 17, "first-run cost").

For each variant (gated retention by our PyTorch form, fla-core absent; and by fla-core, installed
from .wheels/ into a folder of its own when the wheels are there), two fresh processes of

    yoco needle -m yoco-tiny --ctx 4k,32k --n-depths 2 --device cuda --out OUT/<variant>-run<k>

run 1 with a new, empty TRITON_CACHE_DIR and run 2 with the same folder (every process with one
bytecode cache, PYTHONPYCACHEPREFIX, filled by the floor's first process: see PYCACHE); run 3 is run 2 again under
cProfile (OUT/<variant>-run3-profile.txt: where a warm start's seconds go, by cumulative and by own
time; the profiler slows Python itself, so its first row is not a start-up figure; and
OUT/<variant>-run3-imports.txt: the stack that first imported each of HEAVY_IMPORTS). A row is appended to
needle.csv as soon as its prompt is scored, so the script polls the file (every 20 ms) from just
before the process starts: "first row" is the seconds until the first scored prompt, "exit" until
the process ends. Also printed: yoco's "first run: compiled ..." line (nothing on a warm run), the
autotuning results (``*.autotune.json``) and compiled kernels in the cache folder (fla-core's
autotuned kernels there show that it ran), the first prompt's prefill seconds, and the floor: a
process that only imports torch and starts CUDA.

Run on the GPU machine from the repository root:  OUT=runs/gpu-first-run python3 scripts/gpu_first_run.py
Writes OUT/first_run.json and each run's log (OUT/<variant>-run<k>.log). No run starts once
BUDGET_S (default 220) seconds have passed; each is cut at RUN_S (default 110).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("OUT", "runs/gpu-first-run")).resolve()
BUDGET_S = float(os.environ.get("BUDGET_S", "220"))
RUN_S = float(os.environ.get("RUN_S", "110"))
ARGS = ["needle", "-m", "yoco-tiny", "--ctx", "4k,32k", "--n-depths", "2", "--device", "cuda"]
START = time.monotonic()


def left() -> float:
    return BUDGET_S - (time.monotonic() - START)


# Every process keeps its bytecode here: the GPU machine's Python compiled 1,700-2,900 modules from
# source in every process (torch's own among them: 5.4-7.0 s of a warm run's profile, 2026-12-03), where
# an installed environment reads the .pyc files pip wrote. Its first process (the floor's first)
# compiles them; every later one reads them, as on a user's machine.
PYCACHE = Path(tempfile.mkdtemp(prefix="yoco-first-run-pycache-"))


def env_for(pythonpath: list[str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TRITON_CACHE_DIR", "PYTHONDONTWRITEBYTECODE")}
    return {**env, "PYTHONPATH": os.pathsep.join(pythonpath), "PYTHONUNBUFFERED": "1",
            "PYTHONPYCACHEPREFIX": str(PYCACHE), **extra}


def finds_fla(env: dict[str, str]) -> bool:
    r = subprocess.run([sys.executable, "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('fla') is None)"],
                       env=env, cwd=ROOT)
    return r.returncode == 0


def install_fla() -> str | None:
    """fla-core from .wheels/ into a folder of its own (None: no wheel): what gated retention runs, the
    extra ``gpu``. Not flash-linear-attention (the extra ``fla``, for the FLA baseline): beside it,
    ``import fla`` imports its layers and models, and with them transformers' modeling code."""
    wheels = sorted((ROOT / ".wheels").glob("fla_core-*.whl"))
    if not wheels:
        return None
    site = tempfile.mkdtemp(prefix="yoco-first-run-site-")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", site, *map(str, wheels)], check=True, stdout=subprocess.DEVNULL)
    return site


def floor(env: dict[str, str]) -> float | None:
    """A process that imports torch and runs one CUDA op: the part no cache removes."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", "import torch; torch.ones(1, device='cuda').sum().item()"],
                       env=env, cwd=ROOT, timeout=120)
    return time.monotonic() - t0 if r.returncode == 0 else None


def rows(csv_path: Path) -> list[dict]:
    try:
        with csv_path.open(newline="") as f:
            text = f.read()
    except OSError:
        return []
    lines = text.splitlines(keepends=True)
    complete = "".join(ln for ln in lines if ln.endswith("\n"))
    return list(csv.DictReader(complete.splitlines()))


def run_once(name: str, env: dict[str, str], cache: Path, profile: Path | None = None) -> dict:
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    log = OUT / f"{name}.log"
    csv_path = out / "needle.csv"
    limit = min(RUN_S, left())
    with log.open("w") as f:
        t0 = time.monotonic()
        # run 3: under cProfile, through child() (who imports what)
        cmd = (["-m", "cProfile", "-o", str(profile), str(Path(__file__).resolve()), "--child"] if profile
               else ["-m", "yoco_cli.main"])
        extra = {IMPORTS_ENV: str(OUT / f"{name}-imports.txt")} if profile else {}
        p = subprocess.Popen([sys.executable, *cmd, *ARGS, "--out", str(out)], cwd=ROOT,
                             env={**env, "TRITON_CACHE_DIR": str(cache), **extra}, stdout=f, stderr=subprocess.STDOUT)
        first = None
        while p.poll() is None:
            if first is None and rows(csv_path):
                first = time.monotonic() - t0
            if time.monotonic() - t0 > limit:
                p.kill()
                break
            time.sleep(0.02)
        p.wait()
        end = time.monotonic() - t0
    got = rows(csv_path)
    if first is None and got:
        first = end                           # written in the last 20 ms
    text = log.read_text(errors="replace")
    compiled = re.search(r"first run: compiled .*", text)
    return {"run": name, "rc": p.returncode, "first_row_s": first, "exit_s": end, "rows": len(got),
            "first_prefill_s": float(got[0]["prefill_seconds"]) if got else None,
            "scores": [float(r["score"]) for r in got],
            "compiled_line": compiled.group(0) if compiled else "",
            "autotune_files": len(list(cache.rglob("*.autotune.json"))),
            "kernels_in_cache": len({p.parent for p in cache.rglob("*.json") if not p.name.endswith(".autotune.json")
                                     and not p.name.startswith("__grp__")}),
            "cut_at_s": limit if p.returncode in (-9, 137) else None}


def write_profile(prof: Path, text: Path) -> None:
    """The profile's top entries by cumulative and by own time, as text."""
    import io
    import pstats
    buf = io.StringIO()
    for key, n in (("cumulative", 60), ("tottime", 30)):
        pstats.Stats(str(prof), stream=buf).sort_stats(key).print_stats(n)
    text.write_text(buf.getvalue())


# modules a warm start paid to import in the 2026-12-03 profiles (torch._dynamo, inductor, FSDP and
# triton_kernel_wrap with our PyTorch gRet form too): run 3 writes who first imported each
HEAVY_IMPORTS = ("torch._dynamo", "torch._inductor", "torch._higher_order_ops.triton_kernel_wrap",
                 "torch.distributed.fsdp", "torch.fx.experimental.symbolic_shapes", "sympy", "sklearn",
                 "transformers", "pandas", "matplotlib", "fla")
IMPORTS_ENV = "YOCO_FIRST_RUN_IMPORTS"


def child(argv: list[str]) -> int:
    """Run 3's process: ``yoco argv`` with a finder that appends, for each of ``HEAVY_IMPORTS``, the
    stack that first imported it to the file ``$YOCO_FIRST_RUN_IMPORTS``."""
    import importlib.abc
    import traceback

    out = Path(os.environ[IMPORTS_ENV])

    class FirstImport(importlib.abc.MetaPathFinder):
        seen: set[str] = set()

        def find_spec(self, name, path, target=None):
            if name in HEAVY_IMPORTS and name not in self.seen:
                self.seen.add(name)
                frames = [f for f in traceback.extract_stack()[:-1] if "importlib._bootstrap" not in f.filename]
                with out.open("a") as f:
                    f.write(f"== {name}\n" + "".join(traceback.format_list(frames[-14:])))
            return None

    sys.meta_path.insert(0, FirstImport())
    sys.path.insert(0, str(ROOT))
    from yoco_cli.main import main as yoco

    return yoco(argv)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    base = [str(ROOT)]
    plain = env_for(base)
    variants = []
    if finds_fla(plain):          # fla-core is installed where we cannot leave it out: force our form
        variants.append(("torch-gret", env_for(base, YOCO_KERNEL_GRET="torch"),
                         "fla-core installed in the environment: YOCO_KERNEL_GRET=torch"))
    else:
        variants.append(("torch-gret", plain, "fla-core not installed"))
    site = install_fla()
    if site is not None:
        variants.append(("fla", env_for(base + [site], YOCO_KERNEL_GRET="fla"), f"fla-core alone from .wheels/ ({site})"))
    else:
        print("no fla_core wheel in .wheels/: the fla variant is left out")
    first = floor(plain)                      # compiles torch's bytecode into PYCACHE
    results = {"floor_s": floor(plain), "floor_first_s": first, "argv": ARGS, "pycache": str(PYCACHE),
               "environment_wrote_no_bytecode": os.environ.get("PYTHONDONTWRITEBYTECODE", ""), "variants": []}
    print(f"floor (import torch + first CUDA op): {results['floor_s']:.1f} s (the first such process, compiling "
          f"torch's bytecode: {first:.1f} s)" if results["floor_s"] and first else "floor: failed")
    for name, env, note in variants:
        cache = Path(tempfile.mkdtemp(prefix=f"yoco-triton-{name}-"))
        runs = []
        for k, label in ((1, "cold cache"), (2, "warm cache"), (3, "warm cache, under cProfile")):
            if left() < 15:
                print(f"{name} run {k}: not started (budget {BUDGET_S:.0f} s spent)")
                break
            prof = OUT / f"{name}-run{k}.prof" if k == 3 else None
            r = run_once(f"{name}-run{k}", env, cache, prof)
            if prof is not None and prof.exists():
                write_profile(prof, OUT / f"{name}-run{k}-profile.txt")
                prof.unlink()
            r["cache"] = label
            runs.append(r)
            first = "-" if r["first_row_s"] is None else f"{r['first_row_s']:.1f} s"
            print(f"{name:<10} run {k} ({label}): first scored prompt {first}, exit {r['exit_s']:.1f} s, rc {r['rc']}, "
                  f"{r['rows']} rows, first prefill {r['first_prefill_s']}, scores {r['scores']}, "
                  f"{r['kernels_in_cache']} kernels / {r['autotune_files']} autotune results cached"
                  + (f", CUT at {r['cut_at_s']:.0f} s" if r["cut_at_s"] else ""))
            if r["compiled_line"]:
                print(f"           {r['compiled_line']}")
            if r["rc"] != 0:
                print("           log tail: " + " | ".join((OUT / f"{name}-run{k}.log").read_text(errors="replace")
                                                            .strip().splitlines()[-6:]))
        results["variants"].append({"variant": name, "note": note, "triton_cache": str(cache), "runs": runs})
        if name == "fla" and runs and runs[0]["autotune_files"] == 0:
            print("           no autotuning result in the cache: fla-core's kernels did not run")
    (OUT / "first_run.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"total {time.monotonic() - START:.0f} s; {OUT / 'first_run.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[2:]) if sys.argv[1:2] == ["--child"] else main())
