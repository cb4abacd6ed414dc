"""What every command shares: the Typer app, the two consoles, and the error handling.

Heavy modules (torch, the library) are imported inside the commands, so `catnet --help` and
argument errors answer in a fraction of a second.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from catnet.errors import (
    EXIT_SOME_FAILED,
    WRITE_REASONS,
    CatnetError,
    disk_error,
    interrupt_exit_code,
)

app = typer.Typer(
    help="Teach a neural network to tell cat pictures from everything else.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Manage the decoded-picture cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
# soft_wrap: long paths stay on one line when the output goes to a pipe or a file.
console = Console(stderr=True, soft_wrap=True)  # progress and messages; stdout is for results
stdout = Console(soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """A user's mistake becomes one red line and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CatnetError as exc:
            # escape: a message may quote text with brackets (a path, a library's error)
            console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            if exc.hint:
                console.print(f"[dim]hint: {escape(exc.hint)}[/]", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            name = getattr(exc, "name", "")  # catnet.errors.Stopped: SIGTERM or SIGHUP
            if not _other_rank():  # under torchrun, rank 0 says it for the job
                console.print(f"[yellow]stopped by {name}[/]" if name else "[yellow]interrupted[/]")
            raise typer.Exit(interrupt_exit_code(exc)) from None
        except (OSError, RuntimeError) as exc:
            # A full disk or a refused file that no write site named (they raise WriteFailed):
            # still one line, never a traceback.
            cause = disk_error(exc)
            if cause is None:
                raise
            # Only writes meet a full or read-only disk; a refused permission may be a read.
            verb = "" if cause.errno in (errno.EACCES, errno.EPERM) else "could not write "
            where = f"{cause.filename}: " if cause.filename else ""
            console.print(
                f"[bold red]error:[/] {verb}{where}{WRITE_REASONS[cause.errno]}", highlight=False
            )
            raise typer.Exit(EXIT_SOME_FAILED) from None

    return wrapper  # type: ignore[return-value]


def finish(problems: int, note: str = "") -> None:
    """Exit 1 (EXIT_SOME_FAILED) if the job met problems (unreadable inputs, a failed check)."""
    if problems:
        if note:
            console.print(f"[yellow]{note}[/]", highlight=False)
        raise typer.Exit(EXIT_SOME_FAILED)


def _other_rank() -> bool:
    """A torchrun process other than rank 0 (catnet.runtime.distributed.torchrun_rank, read
    here without importing torch)."""
    rank, world = os.environ.get("RANK", ""), os.environ.get("WORLD_SIZE", "")
    return rank.isdigit() and world.isdigit() and int(rank) > 0 and int(world) > 1


def json_safe(value: Any) -> Any:
    """NaN (e.g. ROC-AUC of a one-class folder) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _unsure_range(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise CatnetError(f"--unsure takes LOW,HIGH such as 0.3,0.7, not {text!r}") from None
    if not 0 <= low <= high <= 1:
        raise CatnetError(f"--unsure needs 0 <= LOW <= HIGH <= 1, got {text}")
    return [low, high]
