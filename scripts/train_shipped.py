"""Train the shipped tiny models and the learning-rate sweep beside them, side by side on one GPU,
and measure them with ``yoco needle`` (one device call per stage; every run the same recipe).

    python3 scripts/train_shipped.py train --plan sweep-a --out $OUT [--budget-s 470]
    python3 scripts/train_shipped.py eval  --out $OUT --models yoco-tiny,yoco-swa-tiny,transformer-tiny
    python3 scripts/train_shipped.py eval  --out $OUT --models new=/tmp/yoco-train/RUN/run/final   # a run's weights
    python3 scripts/train_shipped.py ruler --out $OUT --models yoco-tiny,transformer-tiny --limit 50
    python3 scripts/train_shipped.py unpack --bundle DIR --run NAME --as PRESET      # here, after a call

* ``train``: each run of the plan is ``yoco train`` with the shared recipe (``RECIPE``: seed 0, the
  same steps, tokens per step, curriculum and task mix, so the same data for every run) and its own
  learning rate / warm-up / model settings, all started at once. At ``--budget-s`` a run still
  going gets SIGTERM (it keeps a checkpoint at the end of its step) and is marked ``cut``. Then
  every run's weights are measured on the GPU at the lengths trained on (``SELECT_GRID``: single
  needles at 512 to 8K, the multi formats at 8K, 3 depths x 2 trials) and the rows go to ``$OUT/sweep.csv``; per run
  ``$OUT/<run>.safetensors`` (bf16) and, in ``$OUT/runs.tar.gz``, its config, training log,
  summary, needle CSVs and output.
* ``eval``: the shipped-models table (``EVAL_GRID``, 5 depths x 4 trials): single needles from 1K to
  1M, the multi formats at 8K, 128K and 1M; the Transformer to 128K (past that its full-attention
  prefill costs minutes per prompt; what it does past its training length is in the table).
  ``$OUT/needle.tar.gz`` holds each model's needle folder, ``$OUT/eval.csv`` the table.
* ``ruler``: RULER's offline niah tasks through lm-eval (``yoco eval``: ``RULER_TASKS`` at
  ``RULER_LENGTHS``, ``--limit`` prompts per length and task, the models side by side);
  ``$OUT/ruler.csv`` (model, task, length, score, prompts) and ``$OUT/ruler.tar.gz`` (lm-eval's
  results). Needs lm-eval, its RULER extras and their dependencies as wheels (``.wheels-eval``).
* ``unpack``: ships one run of a fetched ``train`` bundle as a preset
  (``yoco_core/weights/<preset>/``) and files its logs under ``reports/runs/``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
Y = [sys.executable, "-m", "yoco_cli.main"]

# The recipe every run shares: the same data (seed 0, the mix), steps, tokens and lengths.
RECIPE = ["--steps", "2000", "--batch-tokens", "64k", "--curriculum", "512,1k,2k,4k,8k", "--mix-lengths", "0.3",
          "--seed", "0", "--save-every", "250", "--log-every", "20"]
TRAINED = (512, 1024, 2048, 4096, 8192)
# Parameter counts within 0.6% of yoco-tiny's 6.79M: the Transformer and the SWA self-decoder have
# fewer attention weights than gRet, so their MLPs are a little wider (816 against 768).
WIDER = "--set ffn_dim=816"
PLANS = {
    "sweep-a": ["transformer-tiny lr=5e-4 " + WIDER, "transformer-tiny lr=1e-3 " + WIDER,
                "transformer-tiny lr=2e-3 " + WIDER, "yoco-tiny lr=2e-3"],
    # after "binding" (2000 steps): both learn single needles; YOCO binds keys (multi-key 1.0) but
    # lists too few values, the Transformer lists them all but does not bind (multi-key 0.17)
    "long-a": ["yoco-tiny lr=2e-3", "yoco-tiny lr=2e-3 order=any", "transformer-tiny lr=5e-4 " + WIDER],
    "long-b": ["transformer-tiny lr=3e-4 " + WIDER, "yoco-swa-tiny lr=5e-4 " + WIDER,
               "yoco-swa-tiny lr=1e-3 " + WIDER],
    "binding": ["transformer-tiny lr=5e-4 " + WIDER, "yoco-tiny lr=2e-3", "yoco-swa-tiny lr=2e-3 " + WIDER],
    # issue 16's multi-needle / multi-value misses (repeated values at 6-8 needles): the shipped
    # yoco-tiny's recipe (order=any) on data weighted to those formats and counts, beside the current data
    "data-a": ["yoco-tiny lr=2e-3 order=any",
               "yoco-tiny lr=2e-3 order=any formats=single=0.1,multi-key=0.25,multi-needle=0.35,multi-value=0.3 "
               "counts=2=1,3=1,4=1,5=1,6=2,7=2,8=3"],
    "sweep-b": ["transformer-tiny lr=1e-3 warmup=400 " + WIDER, "yoco-tiny lr=1e-3",
                "yoco-swa-tiny lr=1e-3 " + WIDER, "yoco-swa-tiny lr=2e-3 " + WIDER],
}
SELECT_GRID = [("single", None, "512,1k,2k,4k,8k"), ("multi-needle", 4, "8k"), ("multi-key", 4, "8k"),
               ("multi-value", 4, "8k")]        # 3 depths x 2 trials: a minute beside the training
MULTI = (("multi-needle", 2), ("multi-needle", 4), ("multi-needle", 8), ("multi-key", 4), ("multi-value", 4))
EVAL_GRID = {   # the multi formats first: a budget that cuts the grid cuts single needles (1.0 so far), not them
    "yoco": [(t, n, "8k,128k,1m") for t, n in MULTI] + [("single", None, "1k,2k,4k,8k,16k,32k,64k,128k,256k,512k,1m")],
    "transformer": [(t, n, "8k,128k") for t, n in MULTI] + [("single", None, "1k,2k,4k,8k,16k,32k,64k,128k")],
}


def wait_or_stop(procs: list, until: float, grace: float = 30.0) -> None:
    """Wait for ``procs`` (each started in a session of its own) until ``until``; those still running
    then get SIGINT in their whole process group at once (``yoco needle`` stops after its row in
    flight and keeps its rows), and SIGKILL after one shared ``grace``."""
    for p in procs:
        try:
            p.wait(timeout=max(0.1, until - time.time()))
        except subprocess.TimeoutExpired:
            break
    running = [p for p in procs if p.poll() is None]
    for p in running:
        os.killpg(p.pid, signal.SIGINT)
    end = time.time() + grace
    for p in running:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def parse_run(spec: str) -> dict:
    """``PRESET [lr=X] [warmup=N] [--set K=V ...]`` -> the run's name and its ``yoco train`` options."""
    words = spec.split()
    preset, opts, sets, i = words[0], {}, [], 1
    while i < len(words):
        if words[i] == "--set":
            sets += ["--set", words[i + 1]]
            i += 2
            continue
        key, _, value = words[i].partition("=")
        if key not in ("lr", "warmup", "order", "formats", "counts"):
            raise SystemExit(f"bad run spec {spec!r}: {words[i]!r} (use lr=, warmup=, order=, formats=, counts=, "
                             "--set K=V)")
        opts[key] = value
        i += 1
    lr, warmup, order = opts.get("lr", "2e-3"), opts.get("warmup", "-1"), opts.get("order", "text")
    data = [*(["--needle-formats", opts["formats"]] if "formats" in opts else []),
            *(["--needle-counts", opts["counts"]] if "counts" in opts else [])]
    name = (f"{preset}-lr{lr}" + (f"-wu{warmup}" if warmup != "-1" else "") + (f"-{order}" if order != "text" else "")
            + (f"-data{zlib.crc32(' '.join(data).encode()) % 10000:04d}" if data else ""))   # the same every run
    return {"name": name, "preset": preset, "lr": lr, "warmup": warmup, "order": order, "sets": sets,
            "args": ["-m", preset, "--lr", lr, "--warmup", warmup, "--needle-order", order, *data, *sets, *RECIPE]}


def weights_dir(run_dir: Path) -> tuple[Path | None, str]:
    """The run's final weights, else its newest checkpoint (``cut``)."""
    from yoco_core.train import checkpoints

    if (run_dir / "final" / "model.safetensors").is_file():
        return run_dir / "final", "done"
    steps = checkpoints(run_dir)                 # complete step_N checkpoints, oldest first
    return (steps[-1][1], f"cut at step {steps[-1][0]}") if steps else (None, "no weights")


def needle(weights: Path, out: Path, grid, trials: int, depths: int, log, device: str) -> None:
    for task, n, ctx in grid:
        cmd = [*Y, "needle", "-m", str(weights), "--task", task, "--ctx", ctx, "--n-depths", str(depths),
               "--trials", str(trials), "--device", device, "--out", str(out), "--resume"]
        if n:
            cmd += ["--needles", str(n)]
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def accuracy(csv_path: Path) -> dict:
    """(task, needles, ctx) -> mean score, from a needle.csv."""
    acc: dict = {}
    if not csv_path.is_file():
        return acc
    with csv_path.open(newline="") as f:
        for r in csv.DictReader(f):
            acc.setdefault((r["task"], int(r["n_needles"]), int(r["ctx_requested"])), []).append(float(r["score"]))
    return {k: sum(v) / len(v) for k, v in acc.items()}


SMOKE = ["--steps", "4", "--batch-tokens", "2k", "--curriculum", "512,1k", "--set", "dim=32", "--set", "n_layers=2",
         "--set", "ffn_dim=64", "--log-every", "2"]
SMOKE_GRID = [("single", None, "512,1k"), ("multi-needle", 2, "1k")]


def stage_train(a) -> None:
    from yoco_core.train import TrainError, _last_logged, bf16_state, save_bf16

    runs = [parse_run(s) for s in (a.runs.split(";") if a.runs else PLANS[a.plan])]
    for r in runs:
        if a.steps:                              # in place of the recipe's, so commands.txt reads true
            i = r["args"].index("--steps")
            r["args"][i + 1] = str(a.steps)
        if a.smoke:                              # the whole path in seconds on the CPU
            r["args"] += SMOKE
    work, out = Path(a.work), Path(a.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    procs = {}
    for r in runs:
        d = work / r["name"]
        d.mkdir()
        log = (d / "train.txt").open("w")
        procs[r["name"]] = (subprocess.Popen([*Y, "train", *r["args"], "--device", a.device, "--out", str(d / "run")],
                                             stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log)
    print(f"{len(runs)} runs started: {', '.join(procs)}", flush=True)
    while any(p.poll() is None for p, _ in procs.values()) and time.time() - t0 < a.budget_s:
        time.sleep(5)
    for name, (p, log) in procs.items():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for name, (p, log) in procs.items():
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()
        print(f"{name}: train rc {p.returncode} after {time.time() - t0:.0f} s", flush=True)
    # measure every run at its trained lengths, side by side
    evals = []
    for r in runs:
        d = work / r["name"]
        w, status = weights_dir(d / "run")
        r["status"], r["weights"] = status, w
        if w is not None and a.select:
            evals.append(subprocess.Popen([sys.executable, __file__, "_needle", "--weights", str(w), "--out",
                                           str(d / "needle"), "--grid", "smoke" if a.smoke else "select",
                                           "--device", a.device], cwd=ROOT, start_new_session=True))
    wait_or_stop(evals, t0 + a.budget_s + a.select_s)   # a check past its time: its rows so far kept
    rows = []
    for r in runs:
        d = work / r["name"]
        acc = accuracy(d / "needle" / "needle.csv")
        summary = {}
        for f in (d / "run" / "train_summary.json",):
            if f.is_file():
                summary = json.loads(f.read_text())
        last = _last_logged(d / "run")
        row = {"run": r["name"], "preset": r["preset"], "lr": r["lr"], "warmup": r["warmup"], "order": r["order"],
               "sets": " ".join(r["sets"][1::2]), "status": r["status"], "step": last.get("step", ""),
               "train_s": summary.get("train_seconds", last.get("seconds", "")),
               "answer_loss": last.get("answer_loss", ""), "needle_acc_train": last.get("needle_acc", "")}
        for L in TRAINED:
            row[f"single_{L}"] = acc.get(("single", 1, L), "")
        for t in ("multi-needle", "multi-key", "multi-value"):
            row[f"{t}4_8192"] = acc.get((t, 4, 8192), "")
        singles = [row[f"single_{L}"] for L in TRAINED]
        row["min_single_trained"] = min(singles) if all(v != "" for v in singles) else ""
        rows.append(row)
        if r["weights"] is not None:
            try:                                   # bf16, the way ship writes it
                save_bf16(bf16_state(r["weights"]), out / f"{r['name']}.safetensors")
                shutil.copy(r["weights"] / "config.json", d / "config.json")
            except TrainError as e:                # non-finite weights: the row says so, the rest go on
                row["status"] = f"not exported: {e}"
    with (out / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for r in runs:
            d = work / r["name"]
            for rel in ("train.txt", "config.json", "run/train_log.csv", "run/train_summary.json",
                        "run/train_config.json", "run/commands.txt", "needle/needle.csv", "needle/commands.txt",
                        "needle.txt"):
                if (d / rel).is_file():
                    tar.add(d / rel, arcname=f"{r['name']}/{rel}")
    print(f"\n== sweep after {time.time() - t0:.0f} s")
    for row in rows:
        print(f"{row['run']:<34} {row['status']:<18} loss {row['answer_loss']!s:<8} single "
              + " ".join(f"{row[f'single_{L}']!s:>4}" for L in TRAINED)
              + " | multi-needle/key/value@8K " + " ".join(str(row[f"{t}4_8192"]) for t in
                                                           ("multi-needle", "multi-key", "multi-value")))


def stage_needle(a) -> None:
    """One model's grid (a subprocess of train / eval)."""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.grid == "select":
        grid, trials, depths = SELECT_GRID, 2, 3
    elif a.grid == "smoke":
        grid, trials, depths = SMOKE_GRID, 1, 2
    else:
        grid, trials, depths = EVAL_GRID[a.grid], 4, 5
    with (out.parent / f"{out.name}.txt").open("a") as log:
        try:
            needle(Path(a.weights), out, grid, trials, depths, log, a.device)
        except KeyboardInterrupt:        # wait_or_stop: yoco needle (same group) keeps its rows
            pass


def stage_eval(a) -> None:
    from yoco_core import get_config

    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    procs = []
    for spec in a.models.split(","):
        m, _, weights = spec.partition("=")          # NAME=DIR: a trained run's weights under a name
        arch = (json.loads((Path(weights) / "config.json").read_text())["arch"] if weights
                else get_config(m).arch)
        grid = "transformer" if arch == "transformer" else "yoco"
        procs.append((m, subprocess.Popen([sys.executable, __file__, "_needle", "--weights", weights or m, "--out",
                                           str(work / m), "--grid", "smoke" if a.smoke else grid,
                                           "--device", a.device], cwd=ROOT, start_new_session=True)))
    wait_or_stop([p for _, p in procs], t0 + a.budget_s)   # yoco needle keeps its rows; --resume continues
    rows = []
    for m, _ in procs:
        for (task, n, ctx), score in sorted(accuracy(work / m / "needle.csv").items()):
            rows.append({"model": m, "task": task, "needles": n, "ctx": ctx, "score": round(score, 4)})
    with (out / "eval.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "task", "needles", "ctx", "score"])
        w.writeheader()
        w.writerows(rows)
    with tarfile.open(out / "needle.tar.gz", "w:gz") as tar:
        for m, _ in procs:
            for p in (work / m).glob("*"):
                if p.is_file():
                    tar.add(p, arcname=f"{m}/{p.name}")
            if (work / f"{m}.txt").is_file():
                tar.add(work / f"{m}.txt", arcname=f"{m}/needle.txt")
    print(f"== eval after {time.time() - t0:.0f} s")
    for r in rows:
        print(f"{r['model']:<18} {r['task']:<13} {r['needles']:>2} {r['ctx']:>8} {r['score']:.3f}")


RULER_TASKS = "niah_single_1,niah_multikey_2,niah_multikey_3"
RULER_LENGTHS = (4096, 8192, 16384, 32768, 65536)


def _ruler_model(model: str, work: Path, limit: int, device: str, lengths, until: float) -> None:
    """One model's RULER lengths, one ``yoco eval`` each (its ``--limit`` then counts per length),
    shortest first; a length still running at ``until`` is stopped (its results are lost, the
    lengths before it kept) and none is started after."""
    with (work / f"{model}.txt").open("a") as log:
        for L in lengths:
            if time.time() >= until:
                print(f"{model} {L}: not started (budget)", file=log, flush=True)
                continue
            try:
                subprocess.run([*Y, "eval", "--tasks", RULER_TASKS, "-m", model, "--limit", str(limit), "--metadata",
                                json.dumps({"max_seq_lengths": [L]}), "--device", device,
                                "--out", str(work / f"{model}-{L}")],
                               stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=until - time.time())
            except subprocess.TimeoutExpired:
                print(f"{model} {L}: stopped at the budget", file=log, flush=True)


def stage_ruler(a) -> None:
    import threading

    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    lengths = (4096,) if a.smoke else RULER_LENGTHS
    t0 = time.time()
    threads = [threading.Thread(target=_ruler_model, args=(m, work, a.limit, a.device, lengths, t0 + a.budget_s))
               for m in a.models.split(",")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = []
    for m in a.models.split(","):
        for L in lengths:
            f = work / f"{m}-{L}" / "eval.csv"
            if f.is_file():
                with f.open(newline="") as fh:
                    # lm-eval lists every default length, -1 for those not run: the one asked for only
                    rows += [{"model": m, "task": r["task"], "ctx": r["metric"], "score": r["value"],
                              "prompts": r["limit"], "device": r["device"]} for r in csv.DictReader(fh)
                             if r["metric"] == str(L)]
    with (out / "ruler.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "task", "ctx", "score", "prompts", "device"])
        w.writeheader()
        w.writerows(rows)
    with tarfile.open(out / "ruler.tar.gz", "w:gz") as tar:
        tar.add(work, arcname="ruler")
    print(f"== ruler after {time.time() - t0:.0f} s")
    for r in rows:
        print(f"{r['model']:<18} {r['task']:<16} {r['ctx']:>6} {float(r['score']):.3f} ({r['prompts']} prompts)")


def stage_unpack(a) -> None:
    """One run of a fetched train bundle -> yoco_core/weights/<preset>/ (through ``yoco train``'s own
    ``ship``: finite weights, a preset name) and its logs -> reports/runs/. Refused: a run cut
    short (unless ``--force``), and a run whose config is not the preset's (change the preset in
    yoco_core/config.py first, in the commit that ships the weights)."""
    import tempfile

    from yoco_core import get_config
    from yoco_core.config import ModelConfig
    from yoco_core.train import TrainError, ship

    bundle = Path(a.bundle)
    with tarfile.open(bundle / "runs.tar.gz") as tar:
        tar.extractall(bundle / "runs", filter="data")
    src = bundle / "runs" / a.run
    preset = a.as_ or a.run.split("-lr")[0]
    status = {r["run"]: r["status"] for r in csv.DictReader((bundle / "sweep.csv").open())}.get(a.run, "not in sweep.csv")
    if status != "done" and not a.force:
        raise SystemExit(f"{a.run}: {status}; ship it anyway with --force")
    trained = ModelConfig(**{**json.loads((src / "config.json").read_text()), "name": preset})
    want = get_config(preset)
    if trained != want:
        diff = ", ".join(f"{k}={getattr(trained, k)!r} (preset {getattr(want, k)!r})" for k in trained.to_dict()
                         if getattr(trained, k) != getattr(want, k))
        raise SystemExit(f"{a.run} was trained as {diff}: make that the preset {preset} in yoco_core/config.py first")
    with tempfile.TemporaryDirectory() as tmp:
        final = Path(tmp) / "final"
        final.mkdir()
        shutil.copy(bundle / f"{a.run}.safetensors", final / "model.safetensors")
        (final / "config.json").write_text(trained.to_json() + "\n")
        if (src / "run" / "train_summary.json").is_file():
            shutil.copy(src / "run" / "train_summary.json", Path(tmp) / "train_summary.json")
        try:
            dest = ship(tmp, name=preset)
        except TrainError as e:
            raise SystemExit(str(e)) from None
    rep = ROOT / "reports" / "runs" / f"h200-train-{preset}"
    rep.mkdir(parents=True, exist_ok=True)
    for rel in ("run/train_log.csv", "run/train_summary.json", "run/commands.txt", "needle/needle.csv"):
        if (src / rel).is_file():
            shutil.copy(src / rel, rep / Path(rel).name)
    print(f"{a.run} -> {dest} (preset {preset}); logs -> {rep}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    t = sub.add_parser("train")
    t.add_argument("--plan", choices=sorted(PLANS), default="sweep-a")
    t.add_argument("--runs", help="';'-separated run specs instead of a plan: 'PRESET lr=X warmup=N --set K=V'")
    t.add_argument("--out", required=True)
    t.add_argument("--work", default="/tmp/yoco-train")
    t.add_argument("--budget-s", type=float, default=470.0, help="wall seconds for the training, all runs together")
    t.add_argument("--steps", type=int, help="steps of every run (default: the recipe's)")
    t.add_argument("--no-select", dest="select", action="store_false", help="skip the needle check after training")
    t.add_argument("--select-s", type=float, default=100.0, help="wall seconds for that check, all runs together")
    e = sub.add_parser("eval")
    e.add_argument("--models", default="yoco-tiny,yoco-swa-tiny,transformer-tiny",
                   help="presets, or NAME=DIR for a trained run's weights folder (its config.json beside them)")
    e.add_argument("--out", required=True)
    e.add_argument("--work", default="/tmp/yoco-eval")
    e.add_argument("--budget-s", type=float, default=500.0)
    r = sub.add_parser("ruler")
    r.add_argument("--models", default="yoco-tiny,yoco-swa-tiny,transformer-tiny")
    r.add_argument("--limit", type=int, default=50, help="prompts per length and task")
    r.add_argument("--out", required=True)
    r.add_argument("--work", default="/tmp/yoco-ruler")
    r.add_argument("--budget-s", type=float, default=1e9, help="wall seconds, all models together (default: none)")
    n = sub.add_parser("_needle")
    for q in (t, e, n, r):
        q.add_argument("--device", default="cuda")
    for q in (t, e, r):
        q.add_argument("--smoke", action="store_true", help="tiny runs on the CPU: the whole path in a minute")
    n.add_argument("--weights", required=True)
    n.add_argument("--out", required=True)
    n.add_argument("--grid", required=True)
    u = sub.add_parser("unpack")
    u.add_argument("--bundle", required=True)
    u.add_argument("--run", required=True)
    u.add_argument("--as", dest="as_")
    u.add_argument("--force", action="store_true", help="ship a run cut short (its newest checkpoint)")
    a = p.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    {"train": stage_train, "eval": stage_eval, "ruler": stage_ruler, "_needle": stage_needle,
     "unpack": stage_unpack}[a.stage](a)


if __name__ == "__main__":
    main()
