"""The main job: train, evaluate, predict, and the offline demo; the cache commands.

Each command parses options and calls the library; heavy modules (torch, the library) are
imported inside the commands, so `catnet --help` and argument errors answer in a fraction of a
second.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import typer

from catnet.cli.app import (
    _unsure_range,
    app,
    cache_app,
    console,
    finish,
    friendly_errors,
    json_safe,
    stdout,
)
from catnet.cli.options import config_file, config_options, help_of, overrides
from catnet.config import EvaluateConfig, PredictConfig, TrainConfig
from catnet.errors import CatnetError

# Not flags: init_from is set by `catnet finetune` from its CHECKPOINT argument.
TRAIN_INTERNAL = {"init_from": "set by catnet finetune from its CHECKPOINT argument"}


@app.command()
@friendly_errors
@config_options(TrainConfig, exclude=TRAIN_INTERNAL)
def train(
    data: str = typer.Argument("", help=help_of(TrainConfig, "data")),
    config: Path | None = config_file(TrainConfig),
    **settings: Any,
) -> None:
    """Train a network on a folder of tagged pictures.

    Every setting of catnet.config.TrainConfig is a flag; flags override the --config file."""
    from catnet.config import load_config

    values = {"data": data or None, **overrides(TrainConfig, settings)}
    if settings["resume"]:
        from catnet.training.state import resume_config

        cfg = resume_config(settings["resume"], values)
    else:
        cfg = load_config(TrainConfig, config, values)
    from catnet.cli.render import run_training

    finish(run_training(cfg, console).skipped)


@app.command()
@friendly_errors
@config_options(EvaluateConfig)
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A catnet checkpoint (best.pt)."),
    data: Path = typer.Argument(..., help="Folder of tagged pictures (uses test/, else val/)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    unsure: str | None = typer.Option(
        None, help="LOW,HIGH: p(cat) in this range counts as unsure."
    ),
    pick_threshold: str | None = typer.Option(
        None, help="Choose the threshold on this data: f1, precision=P or recall=R."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="With --pick-threshold: write the new checkpoint to FILE."
    ),
    report: Path | None = typer.Option(None, help="Write DIR/index.html and DIR/mistakes.csv."),
    config: Path | None = config_file(EvaluateConfig),
    **settings: Any,
) -> None:
    """Measure a checkpoint on tagged pictures: accuracy, precision, recall, F1, ROC-AUC."""
    from catnet.cli.render import print_evaluation
    from catnet.config import load_config
    from catnet.evaluating.evaluation import evaluate as run_evaluate

    if pick_threshold and not output:
        raise CatnetError("--pick-threshold needs --output FILE for the new checkpoint")
    if pick_threshold:
        from catnet.scoring.metrics import parse_threshold_rule

        try:  # before the evaluation, not after it
            parse_threshold_rule(pick_threshold)
        except ValueError as exc:
            raise CatnetError(str(exc)) from None
    values = {**overrides(EvaluateConfig, settings), "unsure": _unsure_range(unsure)}
    cfg = load_config(EvaluateConfig, config, values)
    say = functools.partial(console.print, highlight=False, markup=False)
    result = run_evaluate(checkpoint, data, cfg, on_message=say)
    if pick_threshold and output:
        from catnet.evaluating.evaluation import save_with_threshold

        picked = save_with_threshold(checkpoint, result, pick_threshold, output)
        result.metrics["picked_threshold"] = picked
        console.print(
            f"threshold {picked['threshold']:.4f} ({pick_threshold}): precision {picked['precision']:.3f}, "
            f"recall {picked['recall']:.3f}; saved {output}",
            highlight=False,
        )
    if report:
        from catnet.evaluating.report import write_report

        page = write_report(result, report, checkpoint=checkpoint)
        console.print(f"report: {page}", highlight=False)
    if as_json:
        stdout.print_json(json.dumps(json_safe(result.metrics)))
    else:
        print_evaluation(result, stdout)
    finish(len(result.skipped), f"skipped {len(result.skipped)} unreadable files")


@app.command()
@friendly_errors
@config_options(PredictConfig)
def predict(
    checkpoint: Path = typer.Argument(..., help="A catnet checkpoint (best.pt)."),
    paths: list[str] = typer.Argument(..., help="Files, folders (searched recursively) or globs."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write rows to FILE.csv or FILE.jsonl."
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON lines on stdout."),
    unsure: str | None = typer.Option(None, help="LOW,HIGH: label p(cat) in this range 'unsure'."),
    skip_done: bool = typer.Option(
        False, "--skip-done", help="Skip paths already in --output; append."
    ),
    sort_into: Path | None = typer.Option(
        None, help="Copy pictures into DIR/cat, DIR/not_cat, DIR/unsure."
    ),
    link: bool = typer.Option(
        False, "--link", help="With --sort-into: hard-link instead of copying."
    ),
    config: Path | None = config_file(PredictConfig),
    **settings: Any,
) -> None:
    """Tag new pictures as cat or not_cat."""
    from catnet.cli.predict_view import run_prediction
    from catnet.config import load_config

    cfg = load_config(PredictConfig, config, overrides(PredictConfig, settings))
    if any(p in ("on", "off") and not Path(p).exists() for p in paths):  # `--open-set off`
        raise CatnetError("--open-set takes no value: --open-set or --no-open-set")
    if skip_done and not output:
        raise CatnetError("--skip-done needs --output FILE to know what is done")
    low_high = _unsure_range(unsure)
    summary = run_prediction(
        checkpoint, paths, cfg, output, as_json, stdout, console,
        skip_done=skip_done, unsure=tuple(low_high) if low_high else None,
        sort_dest=sort_into, link=link,
    )  # fmt: skip
    finish(summary["errors"])


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(
        Path("catnet-demo"), help="Folder for the generated data and the runs."
    ),
    time_budget: float = typer.Option(60.0, help="Seconds for training the CNN."),
) -> None:
    """Offline demo: draw a synthetic dataset, train, evaluate and predict, all in ~2 minutes."""
    from catnet.cli.render import run_demo

    run_demo(out, time_budget, console, stdout)


@cache_app.command("clear")
@friendly_errors
def cache_clear() -> None:
    """Delete every cached picture."""
    from catnet.data.cache import clear_cache

    root, freed = clear_cache()
    console.print(f"removed {root} ({freed / 1e6:.1f} MB)")


@cache_app.command("info")
@friendly_errors
def cache_info() -> None:
    """Where the cache is and how big."""
    from catnet.data.cache import cache_usage

    root, size, pictures = cache_usage()
    stdout.print(f"{root}: {pictures} pictures, {size / 1e6:.1f} MB")
