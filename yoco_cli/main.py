"""The ``yoco`` command: one Typer app, one module per subcommand."""
from __future__ import annotations

import contextlib
import sys
import warnings

import typer
from rich.markup import escape

from . import eval as eval_cmd
from . import interrupts, needle, profile, report, train
from .options import UserError, console, set_argv
from .schemas import SchemaError

app = typer.Typer(
    name="yoco",
    help="Long-context evaluation and profiling for YOCO (You Only Cache Once) and Transformer models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("needle")(needle.needle)
app.command("eval")(eval_cmd.eval_command)
app.command("profile")(profile.profile)
app.command("report")(report.report)
app.command("train")(train.train)


INTERRUPTED = (130, 143)   # Ctrl-C (typer turns it into Exit(130)) and SIGTERM: 128 + the signal


def main(argv: list[str] | None = None) -> int:
    """Run one ``yoco`` command; returns its exit code. With ``standalone_mode=False`` click
    returns the code of a ``typer.Exit`` / ``ctx.exit`` (Ctrl-C included) instead of raising it,
    and a command's own return value (None: success). A ``SchemaError`` (a damaged results file,
    a disk full, a folder another run holds) is one line and exit 2, like bad input."""
    set_argv(argv)
    interrupts.take_reported()
    try:
        with _notices_as_lines():
            rc = app(args=argv, standalone_mode=False)
    except (UserError, SchemaError) as e:
        return _one_line(str(e))
    except Exception as e:
        if _is_setting_error(e):     # a bad YOCO_KERNEL_* variable, refused when the kernels load
            return _one_line(str(e))
        if isinstance(e, (MemoryError, RuntimeError)):     # an allocation failure while running
            from .options import memory_error_line

            line = memory_error_line(e)
            if line is not None:
                return _one_line(line)
        # click's usage errors (typer vendors its own click, so match the interface, not a class):
        # the message and usage, exit 2; bare `yoco` has already printed the help
        if type(e).__name__ == "NoArgsIsHelpError":
            return 0
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        if type(e).__name__ == "Abort":
            return 1
        raise
    if rc in INTERRUPTED and not interrupts.take_reported():
        console.print("[yellow]interrupted[/]: what was measured is on disk "
                      "(needle, profile, train: run again with --resume)")
    return rc if isinstance(rc, int) else 0


@contextlib.contextmanager
def _notices_as_lines():
    """``yoco_core.errors.Notice`` warnings printed as one ``notice:`` line each (not Python's
    two-line warning with a source line); other warnings as they were."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__name__ == "Notice" and category.__module__ == "yoco_core.errors":
            console.print(f"[yellow]notice:[/] {escape(str(message))}", highlight=False, soft_wrap=True, emoji=False)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _one_line(message: str) -> int:
    """The one line a refusal prints (user text never read as markup or emoji codes: ``cuda:x``)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)
    return 2


def _is_setting_error(e: BaseException) -> bool:
    """``yoco_core.errors.SettingError``, matched without importing ``yoco_core`` (that would load
    torch for every command, and re-run the import that just failed): if one was raised, the
    module that defines it is loaded."""
    errors = sys.modules.get("yoco_core.errors")
    return errors is not None and isinstance(e, errors.SettingError)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
