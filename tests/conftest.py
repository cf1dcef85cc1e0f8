import gc
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yoco_core import build_model, get_config

# Small shapes of every architecture, float32, weights drawn large enough (std 0.2) that the
# logits are far from uniform: a wrong cache or mask shows up as a large difference.
SMALL = dict(dim=64, n_heads=4, n_kv_heads=2, ffn_dim=128, n_layers=4)
ARCHS = {
    "yoco-gret": get_config("yoco-tiny").replace(cross_rope=True, cross_logn=0, **SMALL),
    "yoco-swa": get_config("yoco-swa-tiny").replace(window=16, cross_rope=True, cross_logn=0, **SMALL),
    "transformer": get_config("transformer-tiny").replace(**SMALL),
    # NoPE cross-decoder with log-length query scaling (active from 8 keys on, so at test lengths)
    "yoco-nope": get_config("yoco-tiny").replace(cross_rope=False, cross_logn=8, **SMALL),
}


def small_model(kind: str, seed: int = 0, **overrides):
    cfg = ARCHS[kind].replace(**overrides)
    model = build_model(cfg, seed=seed)
    model.init_weights(std=0.2, generator=torch.Generator().manual_seed(seed))
    return model


@pytest.fixture(params=list(ARCHS))
def arch(request):
    return request.param


@pytest.fixture(autouse=True)
def _freeze_what_lives_on():
    """Before each test: collect the garbage, then move every object still alive (the modules
    imported so far, their tables, the longer-scoped fixtures) to the collector's permanent
    generation. A full collection (the ``gc.collect()`` of ``yoco_core.perf.hardware.release``,
    around every profiled cell, or the interpreter's own) then walks only what was made since, not
    the hundreds of thousands of objects of torch, transformers, pandas and lm-eval (over 60 s of
    tests/test_profile.py went to that). Frozen objects are still freed by their reference counts;
    only a reference cycle among them waits for the session's end (``pytest_unconfigure``)."""
    gc.collect()
    gc.freeze()


def pytest_unconfigure(config):
    gc.unfreeze()       # the interpreter's exit collects everything, as without the freeze


@pytest.fixture(scope="session")
def lm_eval_index_once():
    """lm-eval's index of its own ~15000 task YAML files built once per session (about 9 s on 2
    cores), not at every ``TaskManager`` that ``yoco eval`` makes in this process: later builds get
    a copy (unpickled, so a caller that changes its index changes only its own). Every other folder
    (the project's tasks/) is indexed anew each time, and the folders merge as lm-eval merges them
    (later ones override). Child processes build their own."""
    import pickle

    from lm_eval.tasks import _index

    defaults = Path(_index.__file__).parent.resolve()
    build = _index.TaskIndex.build
    saved = {}

    def built_once(paths, *, resolve_includes=True):
        paths = list(paths)
        if not (paths and resolve_includes and Path(paths[0]).resolve() == defaults):
            return build(paths, resolve_includes=resolve_includes)
        if "defaults" not in saved:
            saved["defaults"] = pickle.dumps(build(paths[:1]))
        index = pickle.loads(saved["defaults"])
        index.update(build(paths[1:]))
        return index

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_index.TaskIndex, "build", staticmethod(built_once))
        yield


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def assert_close_scaled(out, ref, tol: float = 1e-4) -> None:
    """The kernel tests' one check: ``out`` finite, of ``ref``'s shape, and
    max |out - ref| / max(1, max |ref|) below ``tol`` (computed in float64)."""
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    err = float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1.0))
    assert err < tol, err


def run_interpreted(test_file: str, min_passed: int, **env) -> None:
    """Rerun ``test_file`` (but its ``test_interpreted_suite``) in a subprocess with
    ``TRITON_INTERPRET=1`` (and ``env``) set before triton is first imported; fail unless at least
    ``min_passed`` tests passed there and none was skipped or failed."""
    if INTERPRETED:
        pytest.skip("this process is the interpreted run")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(test_file)),
                        "-k", "not test_interpreted_suite"],
                       cwd=root, env={**os.environ, "TRITON_INTERPRET": "1", **env},
                       capture_output=True, text=True, timeout=600)
    tail = r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    m = re.search(r"(\d+) passed", r.stdout)
    assert m and int(m.group(1)) >= min_passed, tail
    assert "skipped" not in r.stdout and "failed" not in r.stdout, tail


def interpreted_module(name: str, *kernels: str):
    """The Triton module ``name``, checked to hold interpreted kernels (skips outside the
    interpreted run)."""
    if not INTERPRETED:
        pytest.skip("runs in test_interpreted_suite's TRITON_INTERPRET=1 subprocess")
    import importlib

    from triton.runtime.interpreter import InterpretedFunction
    mod = importlib.import_module(name)
    for k in kernels:
        assert isinstance(getattr(mod, k), InterpretedFunction)
    return mod


NEEDLE_TIMING = ["prefill_seconds", "device", "date"]       # may differ from run to run


def needle_content(out):
    """``out``/needle.csv as text, without the columns that differ from run to run."""
    import pandas as pd

    df = pd.read_csv(Path(out) / "needle.csv", dtype=str, keep_default_na=False)
    return df.drop(columns=NEEDLE_TIMING)


def _yoco_process(args, env):
    """(the repository root, the environment, the command) of `yoco ARGS` in a fresh process."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""), **dict(env)}
    return root, env, [sys.executable, "-m", "yoco_cli.main", *args]


def run_yoco(*args, script=None, n=None, env=()):
    """`yoco ARGS` in a fresh process (under torchrun with ``n`` processes and ``script``)."""
    root, env, cmd = _yoco_process(args, env)
    if script is not None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", str(script),
               *args]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def start_yoco(*args, env=()):
    """`yoco ARGS` started in a fresh process (as ``run_yoco``, not waited for: ``finish`` waits);
    its output goes to files, so a long one never blocks it on a full pipe while nobody reads."""
    import tempfile

    root, env, cmd = _yoco_process(args, env)
    out, err = (tempfile.TemporaryFile("w+") for _ in range(2))
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=err, text=True)
    proc.outputs = (out, err)
    return proc


def finish(*procs, timeout=300) -> list[subprocess.CompletedProcess]:
    """What ``run_yoco`` returns, for each process ``start_yoco`` started (all are waited for, or
    killed past ``timeout`` seconds)."""
    done = []
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc in procs:
        texts = []
        for f in proc.outputs:
            f.seek(0)
            texts.append(f.read())
            f.close()
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, *texts))
    return done


def _rank_main(rank: int, body, init: str, out_dir: str, world: int, gpus: bool) -> None:
    """One spawned rank of ``spawn_ranks``: its process group, ``body(rank, world, device)`` (the
    problems it found, a list of lines), written where the parent reads it."""
    import traceback

    import torch.distributed as dist

    torch.set_num_threads(1)
    device = f"cuda:{rank}" if gpus else "cpu"
    if gpus:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if gpus else "gloo", init_method=init, rank=rank, world_size=world)
    try:
        bad = body(rank, world, device)
    except Exception:
        bad = [traceback.format_exc()]
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(bad))


def spawn_ranks(body, world: int, gpus: bool = False) -> None:
    """Run ``body`` (a module-level function) on ``world`` spawned ranks (gloo on the CPU, NCCL on
    ``cuda:rank``) and fail with every rank's problems."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_rank_main, args=(body, f"file://{os.path.join(d, 'rendezvous')}", d, world, gpus), nprocs=world,
                 join=True)
        reports = [open(os.path.join(d, f"rank{r}.txt")).read() for r in range(world)]
    assert reports == [""] * world, "\n".join(reports)
