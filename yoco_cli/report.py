"""`yoco report`: one or more results folders into figures, ``report.md`` and a self-contained
``report.html`` (``reporting.build``, imported when the command runs: pandas and matplotlib load
with it, not at every command's start)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from . import schemas
from .options import OutOpt, command_line, console, ensure_out_dir

DEFAULT_OUT = Path("runs/report")


def report(
    dirs: Annotated[list[Path], typer.Argument(
        help="Results folders (searched recursively for profile.csv, needle.csv, eval.csv).",
        show_default=False)],
    out: OutOpt = DEFAULT_OUT,
) -> None:
    """Figures, report.md and a self-contained report.html from one or more results folders."""
    from .reporting import build

    out = ensure_out_dir(out)
    res = build(list(dirs), out, command_line())
    schemas.write_command(out, command_line())
    console.print(f"[green]report[/]: {escape(str(res['html']))} and {escape(str(res['md']))} "
                  f"({len(res['figures'])} figures, {len(res['runs'])} results folder(s))", highlight=False)
    print(res["html"])
