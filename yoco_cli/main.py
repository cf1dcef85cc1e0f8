"""The ``yoco`` command: one Typer app, one module per subcommand."""
from __future__ import annotations

import sys

import typer

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
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: rows measured so far are on disk; run again with --resume")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors in standalone_mode=False
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
