"""Data-parallel sweeps: the cells of one grid shared over the processes ``torchrun`` starts.

A sweep's cells (its grid, in the order a one-process run measures them, less those already
done) are dealt round robin over the ranks (``shard``: every rank computes the same split from
the same list, which rank 0 reads and ``share``s so that no rank reads a file another is already
writing). Each rank appends the rows it measures, one at a time, to a part file of its own,
``<name>.rank<r>.csv`` beside the results file (``needle.rank0.csv``, ...), so a rank that dies
loses at most its row in flight. When every rank is done, rank 0 ``merge_parts``: the results
file keeps its rows, and the part files' rows follow in the grid's order, then the part files are
removed; the file is then what one process would have written. A part file left by a run that
stopped (a rank killed, Ctrl-C) counts as done on ``--resume`` whatever the number of ranks then,
and is merged at its end with the new rows (in the grid's order too, so an interrupted run
resumed with any number of ranks ends in the same file as one that was never interrupted).

Ranks are told by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``: ``world``);
without it, one process of world size 1. The process group (``process_group``) only carries
barriers and the small ``share`` of the cells to do, so it is gloo on the CPU and on GPUs alike
(no GPU memory, no NCCL); each rank computes on its own device, ``cuda:LOCAL_RANK``
(``device_for``).
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

T = TypeVar("T")

# a barrier waits for the slowest rank's shard (hours at 1M tokens): far beyond gloo's 30 minutes
TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one run (``world``)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that locks, merges and reports."""
        return self.rank == 0


def world(env=None) -> World:
    """The ranks as torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` give them (one process
    without them). Values that are not whole numbers, or a rank outside the world: ``ValueError``."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return World()
    try:
        size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError(f"torchrun environment: WORLD_SIZE={env.get('WORLD_SIZE')!r}, RANK={env.get('RANK')!r}, "
                         f"LOCAL_RANK={env.get('LOCAL_RANK')!r} are not whole numbers") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"torchrun environment: RANK={rank} outside WORLD_SIZE={size} (or LOCAL_RANK={local} < 0)")
    return World(rank, size, local)


def device_for(device: str, w: World) -> str:
    """The device rank ``w`` computes on: ``cuda`` becomes ``cuda:LOCAL_RANK`` (made the current
    device), ``cpu`` stays. A ``cuda:N`` of one GPU for every rank is refused (``ValueError``)."""
    if not w.parallel or not device.startswith("cuda"):
        return device
    if device != "cuda":
        raise ValueError(f"--device {device}: with {w.size} processes each uses its own GPU (cuda:LOCAL_RANK); "
                         f"use --device cuda")
    import torch

    if w.local_rank >= torch.cuda.device_count():
        raise ValueError(f"rank {w.rank}: no GPU cuda:{w.local_rank} (this machine has {torch.cuda.device_count()})")
    torch.cuda.set_device(w.local_rank)
    return f"cuda:{w.local_rank}"


@contextmanager
def process_group(w: World, backend: str = "gloo") -> Iterator[World]:
    """The process group of a parallel world (torchrun's ``MASTER_ADDR`` / ``MASTER_PORT``),
    destroyed on the way out; one process has none."""
    if not w.parallel:
        yield w
        return
    import torch.distributed as dist

    dist.init_process_group(backend=backend, rank=w.rank, world_size=w.size, timeout=TIMEOUT)
    try:
        yield w
    finally:
        dist.destroy_process_group()


def barrier(w: World) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if w.parallel:
        import torch.distributed as dist

        dist.barrier()


def share(w: World, value: T) -> T:
    """Rank 0's ``value``, on every rank (a barrier too); one process keeps its own."""
    if not w.parallel:
        return value
    import torch.distributed as dist

    box = [value if w.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(cells: Sequence[T], w: World) -> list[T]:
    """Rank ``w.rank``'s cells of ``cells``: every ``w.size``-th from its rank on (round robin, so
    each rank gets a share of every length of a length-major grid)."""
    return list(cells[w.rank::w.size])


# -- part files ------------------------------------------------------------------------------------
def part_name(name: str, rank: int) -> str:
    """``needle.csv`` -> ``needle.rank3.csv``."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.rank{rank}.{ext}" if dot else f"{name}.rank{rank}"


def part_schema(schema, rank: int):
    """``schema`` (a ``yoco_cli.schemas.Schema``) writing rank ``rank``'s part file instead: the
    same columns, appends, repairs and reads."""
    return dataclasses.replace(schema, name=part_name(schema.name, rank))


def part_files(folder, schema) -> list[tuple[int, Path]]:
    """The part files of ``schema`` in ``folder`` (any number of ranks, of any run), by rank."""
    stem, dot, ext = schema.name.rpartition(".")
    pattern = re.compile(re.escape(stem) + r"\.rank(\d+)" + (re.escape("." + ext) if dot else "") + "$")
    found = []
    for p in Path(folder).iterdir() if Path(folder).is_dir() else ():
        m = pattern.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def done_keys(folder, schema) -> set[tuple[str, ...]]:
    """The cells the results file and every part file hold (a part's cut-off last row repaired
    first, as ``Schema.repair`` does)."""
    keys = set(schema.done_keys(folder))
    for rank, _ in part_files(folder, schema):
        part = part_schema(schema, rank)
        part.repair(folder)
        keys |= part.done_keys(folder)
    return keys


def merge_parts(folder, schema, order: Sequence[tuple[str, ...]]) -> int:
    """Move every part file's rows into the results file and remove the part files. The results
    file keeps its rows (as they are); then come the parts' rows of cells it does not hold yet
    (one per cell), those of ``order`` (cell keys, in the grid's order) in that order, the others
    (cells of another command's grid) before them in rank, then file order. Written beside the
    file and renamed over it (never half; an ``OSError`` keeps the part files); a part file is
    removed only after. Returns the rows added."""
    parts = part_files(folder, schema)
    if not parts:
        return 0
    path = schema.path(folder)
    schema.repair(folder)
    schema.upgrade(folder)
    held = schema.done_keys(folder)
    rows: dict[tuple[str, ...], dict] = {}
    for rank, p in parts:
        part = part_schema(schema, rank)
        part.repair(folder)
        part.upgrade(folder)
        if p.stat().st_size == 0:
            continue
        part.read(p)                          # a damaged part file: SchemaError, nothing merged
        with p.open(newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                k = schema.key_of(r)
                if k not in held and k not in rows:
                    rows[k] = r
    position = {k: i for i, k in enumerate(order)}
    ranked = sorted(rows, key=lambda k: (k in position, position.get(k, 0)))    # stable: file order kept
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=schema.names)
    old = path.read_bytes() if path.exists() else b""
    if not old:
        w.writeheader()
    w.writerows({c: rows[k].get(c, "") for c in schema.names} for k in ranked)
    tmp = path.with_name(path.name + ".merging")
    try:
        tmp.write_bytes(old + text.getvalue().encode("utf-8"))
        os.replace(tmp, path)
    except OSError:                     # the part files are kept: a --resume merges them
        tmp.unlink(missing_ok=True)
        raise
    for _, p in parts:
        p.unlink(missing_ok=True)
    return len(ranked)
