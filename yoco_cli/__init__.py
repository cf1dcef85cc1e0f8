"""yoco_cli: the ``yoco`` command (Typer), one module per subcommand."""
