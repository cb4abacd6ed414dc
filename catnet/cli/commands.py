"""The main job: train, evaluate, predict, and the offline demo; the cache commands.

Each command parses options and calls the library; heavy modules (torch, the library) are
imported inside the commands, so `catnet --help` and argument errors answer in a fraction of a
second.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from catnet.cli.app import (
    _csv_ints,
    _on_off,
    _unsure_range,
    app,
    cache_app,
    console,
    friendly_errors,
    json_safe,
    stdout,
)
from catnet.errors import EXIT_SOME_FAILED, CatnetError


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
    model: str | None = typer.Option(
        None, help="pretrained (default: ImageNet backbone + new head), cnn or mlp."
    ),
    backbone: str | None = typer.Option(
        None, help="timm backbone name [default: tf_efficientnet_lite0, offline weights]."
    ),
    weights: str | None = typer.Option(None, help="Local state dict (.pth) for the backbone."),
    train_stages: int | None = typer.Option(
        None, help="Backbone stages trained after the head (0 = head only)."
    ),
    epochs: int | None = typer.Option(None, help="Most epochs to train."),
    time_budget: float | None = typer.Option(
        None, help="Seconds for the whole command; fits the schedule."
    ),
    image_size: int | None = typer.Option(None, help="Input side in px (0 = from the data)."),
    eval_image_size: int | None = typer.Option(
        None, help="Side in px for validation/inference (0 = the decoded size, ~1.125x)."
    ),
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
    crop_scale: float | None = typer.Option(None, help="Smallest random crop, share of the area."),
    rotation: float | None = typer.Option(None, help="Largest random rotation in degrees."),
    color_jitter: float | None = typer.Option(
        None, help="Largest brightness/contrast/saturation change."
    ),
    label_smoothing: float | None = typer.Option(None, help="Soften the 0/1 targets by this much."),
    cutmix: float | None = typer.Option(None, help="Share of batches mixed with CutMix (0 = off)."),
    ema: float | None = typer.Option(
        None, help="Decay of a moving average of the weights (0 = off)."
    ),
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
        "backbone": backbone, "weights": weights, "train_stages": train_stages,
        "time_budget": time_budget, "image_size": image_size, "eval_image_size": eval_image_size,
        "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "dropout": dropout, "patience": patience,
        "min_delta": min_delta, "monitor": monitor, "lr_schedule": lr_schedule, "warmup": warmup,
        "augment": augment, "crop_scale": crop_scale, "rotation": rotation,
        "color_jitter": color_jitter, "label_smoothing": label_smoothing, "ema": ema,
        "cutmix": cutmix,
        "hidden": _csv_ints(hidden), "activation": activation, "width": width,
        "depth": depth, "seed": seed, "val_fraction": val_fraction, "positive": positive,
        "precision": precision, "device": device, "cache": cache,
    }  # fmt: skip
    if resume:
        from catnet.training.state import resume_config

        cfg = resume_config(str(resume), overrides)
    else:
        cfg = load_config(TrainConfig, config, overrides)
    from catnet.cli.render import run_training

    run_training(cfg, console, out)


@app.command()
@friendly_errors
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A catnet checkpoint (best.pt)."),
    data: Path = typer.Argument(..., help="Folder of tagged pictures (uses test/, else val/)."),
    threshold: float | None = typer.Option(
        None, help="Decision threshold [default: the checkpoint's]."
    ),
    tta: bool | None = typer.Option(
        None, "--tta/--no-tta", help="Average each picture with its mirror [default: as trained]."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    positive: str | None = typer.Option(None, help="Name of the cat class folder."),
    cache: bool = typer.Option(True, "--cache/--no-cache"),
    unsure: str | None = typer.Option(
        None, help="LOW,HIGH: p(cat) in this range counts as unsure."
    ),
    pick_threshold: str | None = typer.Option(
        None, help="Choose the threshold on this data: f1, precision=P or recall=R."
    ),
    save_to: Path | None = typer.Option(
        None, help="With --pick-threshold: write the new checkpoint here."
    ),
    report: Path | None = typer.Option(None, help="Write DIR/index.html and DIR/mistakes.csv."),
    open_set: str | None = typer.Option(
        None, "--open-set", help="on/off: pictures unlike all training pictures are never cat."
    ),
) -> None:
    """Measure a checkpoint on tagged pictures: accuracy, precision, recall, F1, ROC-AUC."""
    from catnet.cli.render import print_evaluation
    from catnet.config import EvaluateConfig, load_config
    from catnet.inference.evaluation import evaluate as run_evaluate

    if pick_threshold and not save_to:
        raise CatnetError("--pick-threshold needs --save-to PATH for the new checkpoint")
    if pick_threshold:
        from catnet.inference.metrics import parse_threshold_rule

        try:  # before the evaluation, not after it
            parse_threshold_rule(pick_threshold)
        except ValueError as exc:
            raise CatnetError(str(exc)) from None
    values = {"threshold": threshold, "tta": tta, "positive": positive, "cache": cache,
              "open_set": _on_off("--open-set", open_set)}  # fmt: skip
    cfg = load_config(EvaluateConfig, None, {**values, "unsure": _unsure_range(unsure)})
    result = run_evaluate(checkpoint, data, cfg)
    if pick_threshold and save_to:
        from catnet.inference.evaluation import save_with_threshold

        picked = save_with_threshold(checkpoint, result, pick_threshold, save_to)
        result.metrics["picked_threshold"] = picked
        console.print(
            f"threshold {picked['threshold']:.4f} ({pick_threshold}): precision {picked['precision']:.3f}, "
            f"recall {picked['recall']:.3f}; saved {save_to}",
            highlight=False,
        )
    if report:
        from catnet.inference.report import write_report

        console.print(f"report: {write_report(result, report)}", highlight=False)
    if as_json:
        stdout.print_json(json.dumps(json_safe(result.metrics)))
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
    tta: bool | None = typer.Option(
        None, "--tta/--no-tta", help="Average each picture with its mirror [default: as trained]."
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON lines on stdout."),
    batch_size: int = typer.Option(64),
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
    open_set: str | None = typer.Option(
        None, "--open-set", help="on/off: pictures unlike all training pictures are never cat."
    ),
) -> None:
    """Tag new pictures as cat or not_cat. Exit code 1 if some could not be read."""
    from catnet.cli.predict_view import run_prediction
    from catnet.config import PredictConfig, load_config

    cfg = load_config(
        PredictConfig, None, {"threshold": threshold, "tta": tta, "batch_size": batch_size,
                              "open_set": _on_off("--open-set", open_set)},
    )  # fmt: skip
    if skip_done and not output:
        raise CatnetError("--skip-done needs --output FILE to know what is done")
    low_high = _unsure_range(unsure)
    summary = run_prediction(
        checkpoint, paths, cfg, output, as_json, stdout, console,
        skip_done=skip_done, unsure=tuple(low_high) if low_high else None,
        sort_dest=sort_into, link=link,
    )  # fmt: skip
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
