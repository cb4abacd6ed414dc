"""The command line: parse options, call library functions, show results with Rich.

Heavy modules (torch, the library) are imported inside the commands, so `catnet --help` and
argument errors answer in a fraction of a second.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from catnet.errors import EXIT_INTERRUPTED, EXIT_SOME_FAILED, CatnetError

app = typer.Typer(
    help="Teach a neural network to tell cat pictures from everything else.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Manage the decoded-picture cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
console = Console(stderr=True)  # progress and messages; stdout is for results
stdout = Console()
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """A user's mistake becomes one red line and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CatnetError as exc:
            console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
            if exc.hint:
                console.print(f"[dim]hint: {exc.hint}[/]", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def _csv_ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CatnetError(
            f"--hidden takes comma-separated layer widths like 512,128, not {text!r}"
        ) from None


@app.command()
@friendly_errors
def train(
    data: str = typer.Argument(
        "", help="DATA_DIR: class folders (cats/, dogs/, ...) or train/ val/ [test/]."
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="TOML file of settings (see configs/)."
    ),
    out: str | None = typer.Option(None, help="Run folder [default: runs/<timestamp>]."),
    model: str | None = typer.Option(None, help="mlp or cnn."),
    epochs: int | None = typer.Option(None, help="Most epochs to train."),
    time_budget: float | None = typer.Option(
        None, help="Seconds for the whole command; fits the schedule."
    ),
    image_size: int | None = typer.Option(None, help="Input side in px (0 = from the data)."),
    batch_size: int | None = typer.Option(None),
    lr: float | None = typer.Option(None, help="Peak learning rate."),
    weight_decay: float | None = typer.Option(None, help="AdamW weight decay."),
    dropout: float | None = typer.Option(None, help="Dropout probability."),
    patience: int | None = typer.Option(None, help="Early stopping patience in epochs (0 = off)."),
    min_delta: float | None = typer.Option(
        None, help="Smallest change that counts as improvement."
    ),
    monitor: str | None = typer.Option(None, help="val_loss or val_acc."),
    lr_schedule: str | None = typer.Option(None, help="cosine, onecycle, step or none."),
    warmup: float | None = typer.Option(None, help="Share of training spent warming up."),
    augment: bool | None = typer.Option(None, "--augment/--no-augment", help="Data augmentation."),
    hidden: str | None = typer.Option(None, help="MLP hidden layers, e.g. 512,128."),
    activation: str | None = typer.Option(None, help="relu, gelu, silu, tanh or sigmoid."),
    width: int | None = typer.Option(None, help="CNN channels in the first stage."),
    depth: int | None = typer.Option(None, help="CNN stages."),
    seed: int | None = typer.Option(None),
    val_fraction: float | None = typer.Option(
        None, help="Held-out share when DATA_DIR is not split."
    ),
    positive: str | None = typer.Option(None, help="Name of the cat class folder."),
    precision: str | None = typer.Option(None, help="auto, bf16 or fp32."),
    device: str | None = typer.Option(None, help="auto, cpu or cuda."),
    cache: bool | None = typer.Option(None, "--cache/--no-cache", help="Reuse decoded pictures."),
    resume: Path | None = typer.Option(None, help="Continue a run from its RUN/last.pt."),
) -> None:
    """Train a network on a folder of tagged pictures."""
    from catnet.config import TrainConfig, load_config

    overrides = {
        "data": data or None, "out": out, "model": model, "epochs": epochs,
        "time_budget": time_budget, "image_size": image_size, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "dropout": dropout, "patience": patience,
        "min_delta": min_delta, "monitor": monitor, "lr_schedule": lr_schedule, "warmup": warmup,
        "augment": augment, "hidden": _csv_ints(hidden), "activation": activation, "width": width,
        "depth": depth, "seed": seed, "val_fraction": val_fraction, "positive": positive,
        "precision": precision, "device": device, "cache": cache,
    }  # fmt: skip
    if resume:
        from catnet.trainstate import resume_config

        cfg = resume_config(str(resume), overrides)
    else:
        cfg = load_config(TrainConfig, config, overrides)
    from catnet.ui import run_training

    run_training(cfg, console, out)


@app.command()
@friendly_errors
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A catnet checkpoint (best.pt)."),
    data: Path = typer.Argument(..., help="Folder of tagged pictures (uses test/, else val/)."),
    threshold: float | None = typer.Option(
        None, help="Decision threshold [default: the checkpoint's]."
    ),
    tta: bool = typer.Option(False, "--tta", help="Average each picture with its mirror image."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    positive: str | None = typer.Option(None, help="Name of the cat class folder."),
    cache: bool = typer.Option(True, "--cache/--no-cache"),
) -> None:
    """Measure a checkpoint on tagged pictures: accuracy, precision, recall, F1, ROC-AUC."""
    from catnet.config import EvaluateConfig, load_config
    from catnet.evaluation import evaluate as run_evaluate
    from catnet.ui import print_evaluation

    cfg = load_config(
        EvaluateConfig,
        None,
        {"threshold": threshold, "tta": tta, "positive": positive, "cache": cache},
    )
    result = run_evaluate(checkpoint, data, cfg)
    if as_json:
        stdout.print_json(json.dumps(result.metrics))
    else:
        print_evaluation(result, stdout)
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} unreadable files[/]")


@app.command()
@friendly_errors
def predict(
    checkpoint: Path = typer.Argument(..., help="A catnet checkpoint (best.pt)."),
    paths: list[str] = typer.Argument(..., help="Files, folders (searched recursively) or globs."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write rows to FILE.csv or FILE.jsonl."
    ),
    threshold: float | None = typer.Option(
        None, help="Decision threshold [default: the checkpoint's]."
    ),
    tta: bool = typer.Option(False, "--tta", help="Average each picture with its mirror image."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines on stdout."),
    batch_size: int = typer.Option(64),
) -> None:
    """Tag new pictures as cat or not_cat. Exit code 1 if some could not be read."""
    from catnet.config import PredictConfig, load_config
    from catnet.ui import run_prediction

    cfg = load_config(
        PredictConfig, None, {"threshold": threshold, "tta": tta, "batch_size": batch_size}
    )
    summary = run_prediction(checkpoint, paths, cfg, output, as_json, stdout, console)
    if summary["errors"]:
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(
        Path("catnet-demo"), help="Folder for the generated data and the runs."
    ),
    time_budget: float = typer.Option(60.0, help="Seconds for training the CNN."),
) -> None:
    """Offline demo: draw a synthetic dataset, train, evaluate and predict, all in ~2 minutes."""
    from catnet.ui import run_demo

    run_demo(out, time_budget, console, stdout)


@cache_app.command("clear")
@friendly_errors
def cache_clear() -> None:
    """Delete every cached picture."""
    from catnet.cache import clear_cache

    root, freed = clear_cache()
    console.print(f"removed {root} ({freed / 1e6:.1f} MB)")


@cache_app.command("info")
@friendly_errors
def cache_info() -> None:
    """Where the cache is and how big."""
    from catnet.cache import cache_usage

    root, size, pictures = cache_usage()
    stdout.print(f"{root}: {pictures} pictures, {size / 1e6:.1f} MB")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
