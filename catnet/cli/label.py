"""`catnet label`: the local labelling page. Parses options, opens a session, prints the URL."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from catnet.cli.app import app, console, friendly_errors


@app.command()
@friendly_errors
def label(
    data: Path = typer.Argument(..., metavar="DIR", help="The tagged folder (DATA_DIR)."),
    model: Path | None = typer.Option(
        None, "--model", help="Checkpoint that ranks the pictures (default: none until Teach)."
    ),
    unlabeled: Path | None = typer.Option(
        None, "--unlabeled", help="Folder of untagged pictures (default: DIR/unlabeled)."
    ),
    host: str | None = typer.Option(
        None, help="Address to listen on (default: 127.0.0.1, this machine only)."
    ),
    port: int | None = typer.Option(None, help="Port (default: 8765; 0 = any free port)."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for Teach's run folders (default: DIR/.catnet/runs)."
    ),
    epochs: int | None = typer.Option(None, help="Epochs of each Teach (default: 5)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML file of settings."),
) -> None:
    """Tag pictures in a local web page, least-sure first; review and teach the model."""
    from catnet.config import LabelConfig, load_config
    from catnet.labelling.app import create_app
    from catnet.labelling.security import new_token
    from catnet.labelling.server import bind, serve, url_for
    from catnet.labelling.session import open_session

    cfg = load_config(
        LabelConfig,
        config,
        {
            "host": host,
            "port": port,
            "unlabeled": str(unlabeled) if unlabeled else None,
            "out": str(out) if out else None,
            "teach_epochs": epochs,
        },
    )
    session = open_session(data, cfg, model)
    sock = bind(cfg.host, cfg.port)
    token = new_token()
    bound_port = sock.getsockname()[1]
    handler = logging.StreamHandler()  # refused requests and moves, on stderr
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.getLogger("catnet.label").addHandler(handler)
    logging.getLogger("catnet.label").setLevel(logging.INFO)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"[bold yellow]warning:[/] listening on {cfg.host}: other machines can reach this "
            "page; only the token in the URL keeps them out",
            highlight=False,
        )
    console.print(f"tagged pictures: {session.data_dir}", highlight=False, markup=False)
    console.print(f"untagged pictures: {session.unlabeled_dir}", highlight=False, markup=False)
    console.print(f"model: {session.describe_model()}", highlight=False, markup=False)
    session.start_rank()
    console.print("open this address in a browser (Ctrl-C stops):", highlight=False)
    # Printed alone on stdout, so a script can read it.
    print(url_for(cfg.host, bound_port, token), flush=True)
    serve(create_app(session, token, cfg.host, bound_port), sock)
