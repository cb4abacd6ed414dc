"""`catnet explain`: where the network looked, as heatmaps over the pictures. Parses options,
calls catnet.explaining.explain_files, prints rows and a summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from catnet.cli.app import app, console, finish, friendly_errors, stdout
from catnet.cli.options import config_file, config_options, overrides
from catnet.config import ExplainConfig


@app.command()
@friendly_errors
@config_options(ExplainConfig)
def explain(
    checkpoint: Path = typer.Argument(..., help="A catnet checkpoint (best.pt)."),
    paths: list[str] = typer.Argument(..., help="Files, folders (searched recursively) or globs."),
    out: Path = typer.Option(
        Path("explain"), "--out", help="Folder for the PNGs, index.csv and contact_sheet.png."
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON lines on stdout."),
    config: Path | None = config_file(ExplainConfig),
    **settings: Any,
) -> None:
    """Show which pixels made the network say cat (or not cat): one heatmap PNG per picture.

    Every setting of catnet.config.ExplainConfig is a flag."""
    from catnet.config import load_config
    from catnet.data.folders import printable
    from catnet.errors import CatnetError
    from catnet.explaining.explain_files import ExplainRow, explain_files
    from catnet.predicting.prediction import load_model

    cfg = load_config(ExplainConfig, config, overrides(ExplainConfig, settings))
    model = load_model(checkpoint, engine=cfg.engine, on_message=console.print)

    def on_row(row: ExplainRow) -> None:
        if as_json:
            print(json.dumps(row.as_dict()), flush=True)  # ensure_ascii: any file name is valid
            return
        if row.error:
            line = f"{'':>7}  {'error':<8} {row.path}  ({row.error})"
        else:
            line = f"{row.p_cat:>7.4f}  {row.label:<8} {row.path} -> {row.output}"
        stdout.print(printable(line), highlight=False, markup=False)

    summary = explain_files(model, paths, out, cfg, on_row)
    if summary["pictures"] == 0:
        raise CatnetError("no pictures found in the given paths")
    counts = ", ".join(f"{v} {k}" for k, v in summary["counts"].items() if v)
    console.print(f"note: {summary['note']}", highlight=False)
    console.print(
        f"{summary['pictures']} pictures: {counts}; {summary['images_per_s']:.1f} images/s; "
        f"index {summary['index']}, contact sheet {summary['contact_sheet']}",
        highlight=False,
        markup=False,
    )
    finish(summary["errors"])
