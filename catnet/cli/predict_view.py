"""Rich at the edge for `catnet predict`: rows to the terminal, a CSV/JSONL file or JSON lines,
and a one-line summary. Importing this does not import torch, so that decoding can start
(catnet.predicting.readahead) while torch loads."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console

from catnet.config import PredictConfig
from catnet.data.folders import printable
from catnet.errors import CatnetError, WriteFailed
from catnet.predicting.outputs import Prediction, RowWriter, done_paths, inputs_outside, sort_into
from catnet.predicting.readahead import start_early


def run_prediction(
    checkpoint: Path,
    paths: list[str],
    cfg: PredictConfig,
    output: Path | None,
    as_json: bool,
    stdout: Console,
    console: Console,
    skip_done: bool = False,
    unsure: tuple[float, float] | None = None,
    sort_dest: Path | None = None,
    link: bool = False,
) -> dict[str, Any]:
    skip = done_paths(output) if (output and skip_done) else set()
    inputs: Iterable[str] = inputs_outside(paths, sort_dest) if sort_dest else paths
    if cfg.ray:  # before anything else: a missing Ray or a bad address is a usage error
        from catnet.distributed.cluster import check_reachable, require_ray

        require_ray()
        check_reachable(cfg.ray)
        # Ray Data logs every job's plan and start to stderr; predict prints its own summary.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    # Decoding starts now, in worker processes, while torch is imported below (~1 s); with
    # --ray, Ray's workers decode.
    reader = None if cfg.ray else start_early(checkpoint, inputs, cfg, skip)
    writer = None
    try:
        # torch is imported only when the engine's cache lacks this checkpoint (or with Ray)
        from catnet.predicting.prediction import answering_model, load_model, predict

        say = lambda text: console.print(f"[yellow]{text}[/]", highlight=False)  # noqa: E731
        model = (  # fail early and clearly on a bad checkpoint
            load_model(checkpoint, engine=cfg.engine, on_message=say)
            if cfg.ray
            else answering_model(checkpoint, engine=cfg.engine, tta=cfg.tta, on_message=say)
        )
        threshold = model.decision(cfg.threshold).threshold
        writer = RowWriter(output, append=skip_done) if output else None
        if not writer and not as_json:
            stdout.print(f"{'p_cat':>7}  {'label':<8} path", style="bold", highlight=False)
        on_row = _row_handler(model.hash, threshold, writer, as_json, stdout, sort_dest, link)
        if cfg.ray:
            from catnet.distributed.ray_predict import predict_on_ray

            summary = predict_on_ray(model, inputs, cfg, on_row, skip, unsure)  # type: ignore[arg-type]
        else:
            summary = predict(model, inputs, cfg, on_row, skip, unsure, reader)
    except WriteFailed as exc:
        if output:
            exc.hint = f"the rows before it are complete; once there is space: {_resume_command()}"
        raise
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: every finished row is on disk
        if output:
            console.print(f"[yellow]stopped; the rows so far are in {output}[/]", highlight=False)
            console.print(f"finish with:  {_resume_command()}", highlight=False, markup=False)
        raise
    finally:
        if writer:
            writer.close()
        if reader:
            reader.close()
    counts = summary["counts"]
    total = sum(counts.values())
    if total == 0 and not skip:
        raise CatnetError("no pictures found in the given paths")
    parts = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    console.print(
        f"{total} pictures: {parts}" + (f"; rows in {output}" if output else ""), highlight=False
    )
    return summary


def _resume_command() -> str:
    """This command line again, with --skip-done: it appends the rows still missing."""
    args = sys.argv[1:]
    return shlex.join(["catnet", *args, *([] if "--skip-done" in args else ["--skip-done"])])


def _row_handler(
    model_hash: str,
    threshold: float,
    writer: RowWriter | None,
    as_json: bool,
    stdout: Console,
    sort_dest: Path | None,
    link: bool,
) -> Callable[[Prediction], None]:
    """Where each prediction goes: the output file, JSON lines, or a table on the terminal."""

    def on_row(pred: Prediction) -> None:
        if sort_dest:
            sort_into(pred, sort_dest, link)
        row = pred.as_row(model_hash, threshold)
        if writer:
            writer.write(row)
        elif as_json:
            print(json.dumps(row), flush=True)
        else:
            p = "" if pred.p_cat is None else f"{pred.p_cat:.4f}"
            note = f"  ({pred.error})" if pred.error else ""
            note = "  (unfamiliar: unlike every training picture)" if pred.unfamiliar else note
            line = printable(f"{p:>7}  {pred.label:<8} {pred.path}{note}")  # odd file names too
            stdout.print(line, highlight=False, markup=False)

    return on_row
