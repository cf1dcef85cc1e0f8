"""The ``yoco`` command: one Typer app, one module per subcommand."""
from __future__ import annotations

import sys

import typer
from rich.markup import escape

from . import eval as eval_cmd
from . import needle, profile, report, train
from .options import UserError, console, set_argv

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


def main(argv: list[str] | None = None) -> int:
    set_argv(argv)
    try:
        app(args=argv, standalone_mode=False)
    except UserError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: what was measured is on disk "
                      "(needle, profile, train: run again with --resume)")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:
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
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
