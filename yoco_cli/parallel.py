"""``--gpus N``: a command run as N processes (``torch.distributed.run``), one per GPU.

``launch`` re-executes the command as typed, less ``--gpus``, under ``python -m
torch.distributed.run --standalone --nproc-per-node N -m yoco_cli.main``: torchrun gives each
process its ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, and the command shards its cells over them
(``yoco_core.parallel.data``); each computes on ``cuda:LOCAL_RANK``, or on the CPU with ``--device
cpu`` (N processes on one machine's cores). Every process starts with NVLink multicast off
(``MULTICAST_OFF``); CPU processes share the cores (``OMP_NUM_THREADS``). The exit code is the
first failing rank's (2: bad input, 130: interrupted, ...), else 0.

``--tp N``: the processes form tensor-parallel groups of N consecutive ranks
(``yoco_core.parallel.tensor``), each holding 1/N of every layer's heads; ``--tp N`` alone starts N
processes, ``--gpus G --tp N`` G of them, G/N data-parallel groups sharing the cells (``layout``).
A group's collectives are NCCL on GPUs, gloo on the CPU (``tensor_group``); the data-parallel
group stays gloo. Only our own models split (``check_tensor_parallel``: refused before any work).
"""
from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from . import options
from .options import fail

GPUS_HELP = ("Run as N processes (torchrun), the cells shared among them: one per GPU (cuda:0 .. cuda:N-1), or N CPU "
             "processes with --device cpu; the same as starting the command under torchrun --nproc-per-node N.")


def gpus_option(more: str = ""):
    """The ``--gpus`` / ``--procs`` option, its help followed by ``more`` (what the command's
    processes write)."""
    return typer.Option("--gpus", "--procs", help=f"{GPUS_HELP} {more}".strip())


TP_HELP = ("Tensor parallel: split every layer's heads over N processes (one per GPU, or CPU processes with --device "
           "cpu) that run each prompt together; with --gpus G, G/N groups of N share the cells. Our models only.")

GpusOpt = Annotated[Optional[int], gpus_option()]

# NVLink multicast (NVLS) off in every process started: see the device notes (KINDS.md)
COMMAND_ENV = "YOCO_PARALLEL_COMMAND"      # the command as typed (with --gpus), for commands.txt and the lock
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def without_option(args: list[str], names: tuple[str, ...] = ("--gpus", "--procs")) -> list[str]:
    """``args`` less every ``--gpus N`` / ``--gpus=N`` (and its aliases)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not a.startswith(tuple(n + "=" for n in names)):
            out.append(a)
    return out


def launch(n: int | None, device: str, tp: int = 1) -> None:
    """With ``--gpus N`` (N > 1), or ``--tp N`` alone (N > 1), run this command as N torchrun
    processes and exit with its code (``typer.Exit``); otherwise return (the command runs here:
    one process, or one of torchrun's). Refused, one line: N < 1, more GPUs than the machine has,
    ``--gpus`` inside a torchrun process, or ``--gpus`` not a multiple of ``--tp``."""
    if tp < 1:
        fail(f"--tp {tp}: must be at least 1")
    option = "--gpus"
    if n is None and tp > 1 and "WORLD_SIZE" not in os.environ:
        n, option = tp, "--tp"
    if n is None:
        return
    if n < 1:
        fail(f"--gpus {n}: must be at least 1")
    if "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ:
        fail(f"--gpus {n}: this process is already one of torchrun's {os.environ['WORLD_SIZE']}; leave --gpus out")
    if n % tp:
        fail(f"--gpus {n} --tp {tp}: the processes form groups of {tp} (tensor parallel); use a multiple of {tp}")
    if n == 1:
        return
    if not device.strip().lower().startswith("cpu"):
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.strip().lower() != "auto" or have:
            if have < n:
                fail(f"{option} {n}: this machine has {have} GPU(s) (or use --device cpu for {n} CPU processes)")
            if device.strip().lower() not in ("auto", "cuda"):
                fail(f"--device {device}: with {option} each process uses its own GPU; use --device cuda")
    args = without_option(_args())
    os.environ[COMMAND_ENV] = options.command_line()       # what the processes record as the command
    os.environ.update(MULTICAST_OFF)          # torchrun's processes inherit this environment
    if device.strip().lower().startswith("cpu") and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))   # the cores shared out
    raise typer.Exit(_torchrun(["--standalone", f"--nproc-per-node={n}", "-m", "yoco_cli.main", *args]))


def tp_option(more: str = ""):
    """The ``--tp`` option, its help followed by ``more``."""
    return typer.Option("--tp", help=f"{TP_HELP} {more}".strip())


def check_tensor_parallel(model: str, tp: int) -> None:
    """Refuse (one line) a model that ``--tp tp`` cannot split, before any weight is read: one not
    of ours (the transformers fallback, arch hf) or one whose heads, KV heads or FFN width do not
    divide by ``tp`` (``tensor_parallel_problem``). A foreign format whose config is only known
    once converted is checked again after loading (``apply_tensor_parallel``)."""
    if tp < 1:
        fail(f"--tp {tp}: must be at least 1")
    if tp == 1:
        return
    from yoco_core.parallel.tensor import tensor_parallel_problem

    cfg = options.model_config(model)
    if cfg is None:
        cfg = _foreign_config(model, tp)
    if cfg is not None and (why := tensor_parallel_problem(cfg, tp)):
        fail(f"--tp {tp}: {why}")


def _foreign_config(model: str, tp: int):
    """``hf:PATH``'s converted config where its family is ours (None where it is only known from
    the weights, or the folder is bad: loading says why); its transformers fallback is refused."""
    prefix, _, rest = model.partition(":")
    if prefix != "hf":
        return None
    from pathlib import Path

    from yoco_core import CheckpointError
    from yoco_core.convert import FAMILIES, read_json

    folder = Path(rest).expanduser()
    try:
        hf = read_json(folder / "config.json")
    except (CheckpointError, OSError, ValueError):
        return None
    kind = hf.get("model_type") if isinstance(hf, dict) else None
    family = FAMILIES.get(kind) if isinstance(kind, str) else None
    if family is None:
        fail(f"--tp {tp}: {model} (model_type {kind!r}) runs on transformers' own model (arch hf), which tensor "
             f"parallel does not split; only our models (presets, checkpoints, converted families) do")
    try:
        return family.config_map(hf, model, f"{family.TAG}:{folder.name}")
    except (CheckpointError, ValueError, KeyError, TypeError):
        return None


def layout(w, tp: int):
    """``w`` (this process's ``World``) as ``tp``-rank tensor-parallel groups of consecutive ranks:
    ``(the data-parallel World of the groups, this rank's place in its group)``. A world that is
    not a multiple of ``tp`` is refused (one line)."""
    from yoco_core.parallel import World

    if w.size % tp:
        fail(f"--tp {tp}: {w.size} processes do not form groups of {tp}; start a multiple of {tp}")
    return World(w.rank // tp, w.size // tp, w.local_rank), w.rank % tp


def tensor_group(w, tp: int, device: str):
    """This rank's tensor-parallel process group (NCCL on a GPU, gloo on the CPU), every group
    made by every rank as ``torch.distributed.new_group`` asks; None with ``tp`` 1."""
    if tp <= 1:
        return None
    import torch.distributed as dist

    from yoco_core.parallel.data import TIMEOUT

    backend = "nccl" if device.startswith("cuda") else "gloo"
    mine = None
    for first in range(0, w.size, tp):
        group = dist.new_group(list(range(first, first + tp)), backend=backend, timeout=TIMEOUT)
        if first <= w.rank < first + tp:
            mine = group
    return mine


def split_model(lm, w, tp: int, dev: str, model: str):
    """With ``--tp``: this rank's tensor-parallel group, ``lm`` sharded over it in place (a model
    that is not ours, or whose heads do not divide, refused: rank 0 says why in one line, the
    others exit 2 without a word); None without."""
    if tp <= 1:
        return None
    from yoco_core.parallel.tensor import apply_tensor_parallel

    group = tensor_group(w, tp, dev)
    try:
        apply_tensor_parallel(lm, group)
    except ValueError as e:
        if w.main:
            fail(f"--tp {tp}: {model}: {e}")
        raise typer.Exit(2) from None
    return group


def data_group(w, tp: int):
    """The gloo group of the ranks at this rank's place in their tensor-parallel groups (ranks
    ``p, p + tp, p + 2 tp, ...``): one rank of every group, where a data-parallel gather runs
    without crossing the groups' own collectives. Every rank makes every such group; with ``tp``
    1 it is the whole world (None)."""
    if tp <= 1:
        return None
    import torch.distributed as dist

    from yoco_core.parallel.data import TIMEOUT

    mine = None
    for place in range(tp):
        group = dist.new_group(list(range(place, w.size, tp)), backend="gloo", timeout=TIMEOUT)
        if w.rank % tp == place:
            mine = group
    return mine


def stop_agreed(group, device) -> int | None:
    """The signal (SIGINT / SIGTERM) that asks a sweep to stop before its next row: this process's
    (``interrupts``), or with a tensor-parallel ``group`` the one any of its ranks got (a maximum
    all-reduced over it, so that all stop or none, no rank left alone in a collective); None:
    go on. Every rank of the group must call it as often as the others."""
    from . import interrupts

    from yoco_core.parallel.tensor import max_over

    return max_over(group, interrupts.stop_requested() or 0, device) or None


def _torchrun(argv: list[str]) -> int:
    """``python -m torch.distributed.run ARGV`` in this process; its exit code: 0, or the first
    failing rank's (128 + the signal for one killed), whose own error line says why (torchrun's
    report of it is silenced); 130 / 143 for a Ctrl-C / SIGTERM of this process, which torchrun
    passes on to each (they stop after their row in flight, up to its 30 s before a SIGKILL)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as e:
        _, first = e.get_first_failure()
        code = first.exitcode
        return 128 - code if code < 0 else code
    except SignalException as e:       # Ctrl-C / SIGTERM: torchrun passed it on to every process,
        return 128 + int(e.sigval)     # which stops after its row in flight (it says so)
    return 0


def _args() -> list[str]:
    """The command's arguments as given (``main(argv)``'s, else ``sys.argv``'s)."""
    return list(sys.argv[1:] if options._ARGV is None else options._ARGV)


def world_or_fail():
    """This process's ``yoco_core.parallel.World`` (torchrun's environment); a malformed one is
    one line."""
    from yoco_core.parallel import world

    try:
        return world()
    except ValueError as e:
        fail(str(e))


def command_line() -> str:
    """The command as typed: ``--gpus N`` included in the processes it started."""
    launched = os.environ.get(COMMAND_ENV)
    return launched if launched and "TORCHELASTIC_RUN_ID" in os.environ else options.command_line()


def opened_by_main(w, held, out, read, share=None):
    """What ``read()`` returns (the rows or cells a sweep already has), read by rank 0 under the
    results folder's lock (kept in ``held``) before any rank writes, and shared with the others
    (``share(w, value)``, ``data.share`` by default); where rank 0 refused (the lock, a file
    without --resume, ...) it says why in one line and the others exit 2 without a word."""
    from yoco_core.parallel import data

    from . import schemas
    from .options import UserError

    value = refusal = None
    if w.main:
        try:
            held.enter_context(schemas.lock_results(out, command_line()))
            value = read()
        except (UserError, schemas.SchemaError) as e:
            refusal = e
    value = (share or data.share)(w, value)
    if refusal is not None:
        raise refusal
    if value is None:
        raise typer.Exit(2)
    return value
