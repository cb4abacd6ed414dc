"""Rich at the edge: progress bars, tables and summaries for the CLI commands. The library
functions they call take callbacks and return plain results."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from catnet.config import TrainConfig
from catnet.training.loop import TrainCallbacks, TrainResult, train


class RichTrainCallbacks(TrainCallbacks):
    """An epoch bar and a batch bar with the running loss, and one line per epoch."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.decode_task = self.epoch_task = self.batch_task = None
        self.first_epoch = 1

    def on_message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def on_decode(self, done: int, total: int) -> None:
        if self.decode_task is None:
            self.decode_task = self.progress.add_task("decoding", total=total, info="")
        self.progress.update(self.decode_task, completed=done)

    def on_epoch_start(self, epoch: int, planned_epochs: int, steps: int) -> None:
        if self.decode_task is not None:
            self.progress.remove_task(self.decode_task)
            self.decode_task = None
        if self.epoch_task is None:
            self.first_epoch = epoch  # > 1 when resuming
            self.epoch_task = self.progress.add_task("epochs", total=planned_epochs, info="")
            self.batch_task = self.progress.add_task("batches", total=steps, info="")
        self.progress.update(self.epoch_task, total=planned_epochs, completed=epoch - 1)
        self.progress.reset(self.batch_task, total=steps, info="")

    def on_batch(self, step: int, steps: int, loss: float) -> None:
        self.progress.update(self.batch_task, completed=step, info=f"loss {loss:.4f}")

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.progress.update(self.epoch_task, completed=row["epoch"], total=row["planned_epochs"])
        if row["epoch"] == self.first_epoch:  # the legend, once per run
            self.console.print(
                f"* = {row['monitor']} better than at every earlier epoch", highlight=False
            )
            if row["time_budget"] > 0:
                self.console.print(
                    "the time budget re-plans the number of epochs as it measures speed",
                    highlight=False,
                )
        # Under a time budget the planned total changes from line to line: leave it out.
        total = "" if row["time_budget"] > 0 else f"/{row['planned_epochs']}"
        mark = " *" if row["improved"] else ""
        self.console.print(
            f"epoch {row['epoch']:3d}{total}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.3f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}  "
            f"lr {row['lr']:.2e}  {row['seconds']:.0f}s{mark}",
            highlight=False,
        )


def run_training(cfg: TrainConfig, console: Console) -> TrainResult:
    from catnet.runtime.distributed import torchrun_rank

    if torchrun_rank():  # a torchrun rank other than 0: rank 0 shows progress for the job
        return train(cfg, TrainCallbacks())
    callbacks = RichTrainCallbacks(console)
    try:
        with callbacks.progress:
            result = train(cfg, callbacks)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP (catnet.cli.signals)
        print_resume_hint(Path(cfg.resume).parent if cfg.resume else latest_run(cfg.out), console)
        raise
    print_train_summary(result, console)
    return result


def print_resume_hint(run_dir: Path | None, console: Console) -> None:
    """After a stop: where the last finished epoch is, and the command that carries on."""
    last = run_dir / "last.pt" if run_dir else None
    if last and last.exists():
        console.print(f"[yellow]interrupted; the last finished epoch is saved in {last}[/]")
        console.print(f"resume with:  catnet train --resume {shlex.quote(str(last))}")


def latest_run(out: str) -> Path | None:
    """The run folder a training with --out `out` writes ("" = the newest under runs/)."""
    if out:
        return Path(out)
    runs = sorted(Path("runs").glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def print_train_summary(result: TrainResult, console: Console) -> None:
    table = Table(title="Training finished", show_header=False)
    table.add_row("stopped", result.stop_reason)
    table.add_row("best epoch", f"{result.best_epoch} of {result.epochs_run}")
    table.add_row("val accuracy", f"{result.metrics['accuracy']:.2%}")
    table.add_row("val ROC-AUC", f"{result.metrics['roc_auc']:.3f}")
    train_acc = result.metrics["train_accuracy"]
    table.add_row(
        "train/val gap",
        f"{train_acc - result.metrics['accuracy']:+.1%} (train accuracy {train_acc:.1%})",
    )
    table.add_row("time", f"{result.seconds:.0f} s")
    table.add_row("best model", str(result.best_checkpoint))
    table.add_row("run folder", str(result.run_dir))
    if result.skipped:
        table.add_row("skipped", f"{result.skipped} unreadable files (see skipped.txt)")
    console.print(table)
    d = result.diagnosis
    if d:
        color = {"good": "green", "overfit": "yellow", "underfit": "yellow"}.get(
            d["verdict"], "white"
        )
        console.print(f"[{color}]{d['message']}[/]", highlight=False)
        if d["next_step"]:
            console.print(f"next: {d['next_step']}", highlight=False)


def print_evaluation(result: Any, console: Console) -> None:
    m = result.metrics
    table = Table(title=f"{m['n']} pictures ({m['split']}) from {m['data']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "precision", "recall", "f1"):
        table.add_row(key, f"{m[key]:.2%}")
    for key in ("roc_auc", "pr_auc", "ece", "ece_uncalibrated"):
        value = m.get(key)
        undefined = value is None or value != value  # NaN: one class only
        table.add_row(key, "undefined (one class)" if undefined else f"{value:.4f}")
    if "unsure_rate" in m:
        table.add_row("unsure_rate", f"{m['unsure_rate']:.2%}")
        table.add_row("sure_accuracy", f"{m['sure_accuracy']:.2%}")
    table.add_row("threshold", f"{m['threshold']:.3f}")
    if "open_set" in m:  # the accuracy above is with the check; this is what it cost or saved
        o = m["open_set"]
        table.add_row("unfamiliar", f"{o['unfamiliar']} ({o['cats_turned_away']} cats turned away)")
        table.add_row("accuracy_without_check", f"{o['accuracy_without_check']:.2%}")
    console.print(table)
    c = m["confusion"]
    confusion = Table(title="Confusion matrix (rows: truth)")
    confusion.add_column("")
    confusion.add_column("predicted cat", justify="right")
    confusion.add_column("predicted not_cat", justify="right")
    confusion.add_row("cat", str(c["tp"]), str(c["fn"]))
    confusion.add_row("not_cat", str(c["fp"]), str(c["tn"]))
    console.print(confusion)


def run_demo(out: Path, time_budget: float, console: Console, stdout: Console) -> None:
    from catnet.demo.run import run_demo as demo

    callbacks = RichTrainCallbacks(console)
    with callbacks.progress:
        summary = demo(out, time_budget, callbacks)
    table = Table(title="catnet demo: held-out synthetic pictures")
    table.add_column("network")
    table.add_column("parameters", justify="right")
    table.add_column("test accuracy", justify="right")
    table.add_column("train time", justify="right")
    for name, r in summary["models"].items():
        table.add_row(name, f"{r['parameters']:,}", f"{r['accuracy']:.1%}", f"{r['seconds']:.0f} s")
    stdout.print(table)
    stdout.print("Predictions on new, untagged pictures:")
    for row in summary["predictions"]:
        stdout.print(
            f"  {row['label']:<8} p(cat)={row['p_cat']:.3f}  truth: {row['truth']:<18} {row['path']}",
            highlight=False,
            markup=False,
        )
    stdout.print(f"\nEverything is in {out}/:")
    for what, where in summary["paths"].items():
        stdout.print(f"  {what:<22} {where}", highlight=False)


def print_info(d: dict[str, Any], console: Console) -> None:
    layers = Table(title=f"{d['model'].upper()} network, layer by layer")
    for col in ("layer", "kind", "neurons / units", "shape", "activation", "parameters"):
        layers.add_column(
            col, justify="right" if col in ("neurons / units", "parameters") else "left"
        )
    for row in d["layers"]:
        layers.add_row(row["layer"], row["kind"], f"{row['units']:,}", row["shape"], row["activation"],
                       f"{row['parameters']:,}")  # fmt: skip
    layers.add_row("total", "", "", "", "", f"{d['total_parameters']:,}", style="bold")
    console.print(layers)
    inp = d["input"]
    console.print(f"input: {inp['image_size']}x{inp['image_size']} RGB (decoded at {inp['decode_size']} px; "
                  f"trained on {inp['train_image_size']} px crops), "
                  f"normalised with mean {inp['mean']} and std {inp['std']}", highlight=False)  # fmt: skip
    counts = d["data"].get("counts", {})
    for split, per_class in counts.items():
        text = ", ".join(f"{k} {v}" for k, v in per_class.items())
        console.print(f"{split} pictures: {text}", highlight=False)
    console.print(f"positive class: {d['classes']['positive']}", highlight=False)
    console.print(
        "regularizers: " + ", ".join(f"{k}={v}" for k, v in d["regularizers"].items()),
        highlight=False,
    )
    m = d["metrics"]
    if "accuracy" in m:
        console.print(
            f"validation: accuracy {m['accuracy']:.2%}, ROC-AUC {m['roc_auc']:.3f}, best epoch "
            f"{m.get('best_epoch')} of {d['epochs_trained']}; threshold {d['threshold']:.3f}, "
            f"temperature {d['temperature']:.3f}",
            highlight=False,
        )
    console.print(open_set_line(d["open_set"]), highlight=False)


def open_set_line(o: dict[str, Any] | None) -> str:
    """catnet info's line on the open-set check: on or off by default, and why."""
    if o is None or o["validation"] is None:
        return "open-set check: " + ("none (checkpoint from before it)" if o is None else "on")
    v = o["validation"]
    seen = (f"on validation it turned away {v['cats_turned_away']} cat(s) the network had right "
            f"and {v['wrong_turned_away']} non-cat(s) it called cat; a check that works as "
            f"designed turns away up to {v['by_chance']} by chance")  # fmt: skip
    if o["on"]:
        return f"open-set check: on ({seen})"
    return f"open-set check: off by default, it did not pay ({seen}); --open-set turns it on"


def print_tune(summary: dict[str, Any], console: Console) -> None:
    table = Table(title="Network size search (each size's longest trial)")
    for col in ("size", "parameters", "train acc", "val acc", "gap", "verdict", "time"):
        table.add_column(col, justify="left" if col in ("size", "verdict") else "right")
    last = {row["trial"]: row for row in summary["rows"]}
    colors = {"good": "green", "overfit": "yellow", "underfit": "cyan"}
    for row in sorted(last.values(), key=lambda r: r["parameters"]):
        mark = " *" if row["trial"] == summary["best"] else ""
        table.add_row(
            row["size"] + mark, f"{row['parameters']:,}", f"{row['train_acc']:.1%}", f"{row['val_acc']:.1%}",
            f"{row['gap']:+.1%}", f"[{colors[row['verdict']]}]{row['verdict']}[/]", f"{row['seconds']:.0f} s",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"best: {summary['best']} -> catnet train DATA --config {summary['best_config']}",
        highlight=False,
    )
