"""The command line (Typer + Rich live here and nowhere else): `app` has every command."""

from catnet.cli.main import app, main

__all__ = ["app", "main"]
