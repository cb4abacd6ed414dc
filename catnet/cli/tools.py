"""CLI commands beyond train/evaluate/predict: the learning loop (correct, finetune, tune), a
look inside (info), the dataset doctor (check) and export. Same rules as commands.py: parse options,
call the library, show the result."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from catnet.cli.app import app, console, finish, friendly_errors, stdout
from catnet.errors import EXIT_SOME_FAILED, CatnetError


@app.command()
@friendly_errors
def correct(
    data: Path = typer.Argument(..., help="The tagged folder to fix (DATA_DIR)."),
    images: list[Path] = typer.Argument(None, help="Pictures whose truth is --truth."),
    truth: str | None = typer.Option(None, help="cat or not_cat: what the pictures are."),
    from_file: Path | None = typer.Option(
        None, "--from", help="predict's CSV with label edited, or mistakes.csv with truth edited."
    ),
) -> None:
    """Record corrections: put pictures in the right class folder and log them."""
    from catnet.curation.corrections import correct as run_correct
    from catnet.curation.corrections import correct_from_file

    if from_file:
        done = correct_from_file(data, from_file)
    elif images and truth:
        done = run_correct(data, images, truth)
    else:
        raise CatnetError("give --truth cat|not_cat and pictures, or --from FILE.csv")
    for c in done:
        console.print(f"{c.new_label:<8} {c.dest}  (was {c.old_label})", highlight=False)
    console.print(f"{len(done)} corrections logged in {data / '.catnet' / 'corrections.csv'}")
    console.print(f"next: catnet finetune CHECKPOINT {data}")


@app.command()
@friendly_errors
def finetune(
    checkpoint: Path = typer.Argument(..., help="The checkpoint to continue from."),
    data: Path = typer.Argument(..., help="The (corrected) tagged folder."),
    epochs: int = typer.Option(
        0, help="Epochs of fine-tuning [0: 20 for a head-only pretrained model, 5 otherwise]."
    ),
    out: str = typer.Option("", help="Run folder \\[default: runs/<timestamp>]."),
) -> None:
    """Continue training on corrected data, corrected pictures weighted up; writes a new run."""
    from catnet.cli.render import (
        RichTrainCallbacks,
        latest_run,
        print_resume_hint,
        print_train_summary,
    )
    from catnet.training.loop import finetune as run_finetune

    callbacks = RichTrainCallbacks(console)
    try:
        with callbacks.progress:
            result = run_finetune(checkpoint, data, epochs, out, callbacks)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: the run resumes like a training
        print_resume_hint(latest_run(out), console)
        raise
    print_train_summary(result, console)
    finish(result.skipped)


@app.command()
@friendly_errors
def tune(
    data: Path = typer.Argument(..., help="DATA_DIR, as for train."),
    model: str = typer.Option("cnn", help="Family to search: cnn, mlp or pretrained."),
    time_budget: float = typer.Option(300.0, help="Seconds for the whole search."),
    out: Path = typer.Option(Path("runs/tune"), help="Folder for tune.csv, tune.png, best.toml."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Base settings (TOML)."),
) -> None:
    """Find the right network size: train a range of sizes, keep the better half, repeat."""
    from catnet.cli.render import print_tune
    from catnet.config import TrainConfig, load_config
    from catnet.training.tune import tune as run_tune

    base = load_config(TrainConfig, config, {"data": str(data), "model": model})
    console.print(f"searching {model} sizes for {time_budget:.0f} s (successive halving)")
    summary = run_tune(base, time_budget, out, on_trial=lambda row: console.print(
        f"  round {row['round']} {row['trial']:<16} val {row['val_acc']:.1%} train {row['train_acc']:.1%}",
        highlight=False,
    ))  # fmt: skip
    print_tune(summary, stdout)
    finish(summary["skipped"], f"skipped {summary['skipped']} unreadable files (see skipped.txt)")


@app.command()
@friendly_errors
def export(
    checkpoint: Path = typer.Argument(..., help="A catnet checkpoint."),
    format: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    output: Path = typer.Option(..., "--output", "-o", help="File to write."),
    check: list[str] = typer.Option(None, help="Pictures (files/folders) to check the export on."),
) -> None:
    """Export the network (ONNX or TorchScript) with preprocessing in its metadata."""
    from itertools import islice

    from catnet.predicting.export import export as run_export
    from catnet.predicting.outputs import expand_inputs

    pictures = list(islice(expand_inputs(check), 64)) if check else None
    result = run_export(checkpoint, format, output, pictures)
    console.print(
        f"wrote {result['path']}; max |logit difference| vs PyTorch {result['max_abs_diff']:.2e} "
        f"on {result['checked_on']} pictures",
        highlight=False,
    )
    if result["max_abs_diff"] > 1e-3:
        raise CatnetError(
            "the export does not reproduce PyTorch's logits", exit_code=EXIT_SOME_FAILED
        )


@app.command()
@friendly_errors
def info(
    checkpoint: Path = typer.Argument(..., help="A catnet checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    neurons: Path | None = typer.Option(
        None, help="MLP only: draw the first hidden neurons' input weights to FILE.png."
    ),
    max_neurons: int = typer.Option(64, help="With --neurons: how many neurons to draw."),
) -> None:
    """See inside a checkpoint: layers and neurons, input, data, regularizers, metrics."""
    from catnet.cli.render import print_info
    from catnet.models.info import describe

    if neurons:
        from catnet.explaining.heatmaps import neuron_grid, save_png
        from catnet.models.info import first_layer_weights

        weights = first_layer_weights(checkpoint)[: max(1, max_neurons)]
        save_png(neuron_grid(weights), neurons)
        console.print(f"drew {len(weights)} neurons' input weights: {neurons}", highlight=False)
    details = describe(checkpoint)
    if as_json:
        stdout.print_json(json.dumps(details))
    else:
        print_info(details, stdout)


@app.command()
@friendly_errors
def check(
    data: Path = typer.Argument(
        ..., metavar="DATA_DIR", help="Class folders or train/ val/ test/."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    fix: bool = typer.Option(
        False, "--fix", help="Move unreadable files to DATA_DIR/.catnet/quarantine/."
    ),
    undo: bool = typer.Option(False, "--undo", help="Put back the files --fix moved."),
    positive: str | None = typer.Option(None, help="Name of the cat class folder."),
) -> None:
    """Find problems in a picture folder: unreadable files, duplicates, train/val leaks.

    Exit code 1 if unreadable files (without --fix) or leaks remain."""
    import os

    from rich.progress import Progress

    from catnet.cli.check_view import print_check
    from catnet.curation.check import check_dataset, fix_dataset, undo_fix
    from catnet.data.folders import printable

    if fix and undo:
        raise CatnetError("--fix and --undo cannot be used together")
    if undo:
        restored = undo_fix(data)
        console.print(f"put back {restored} files" if restored else "nothing to undo")
        return
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("checking pictures", total=None)
        report = check_dataset(
            data, positive or "", on_progress=lambda d, t: bar.update(task, completed=d, total=t)
        )
    if fix and report["unreadable"]:
        where = fix_dataset(data, report)
        report["quarantined_to"] = os.fsdecode(where)
        message = printable(f"moved {len(report['unreadable'])} unreadable files to {where}")
        console.print(message, highlight=False, markup=False)
    if as_json:
        # ensure_ascii: non-UTF-8 file names stay \\udcXX escapes instead of failing to print.
        stdout.print_json(json.dumps(report), ensure_ascii=True)
    else:
        print_check(report, stdout)
    finish(len(report["leaks"]) + (0 if fix else len(report["unreadable"])))
