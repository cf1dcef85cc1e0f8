"""Several processes (``torchrun``) for one command, one module per kind: ``data`` shares a
sweep's cells among the ranks, each appending its rows to a part file of its own, merged into the
one results file at the end in the order a one-process run writes it."""
from .data import World, barrier, device_for, merge_parts, part_files, process_group, share, shard, world

__all__ = ["World", "barrier", "device_for", "merge_parts", "part_files", "process_group", "share", "shard",
           "world"]
