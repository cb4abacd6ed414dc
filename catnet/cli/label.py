"""`catnet label`: the local labelling page. Parses options, opens a session, prints the URL."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from catnet.cli.app import app, console, friendly_errors
from catnet.cli.options import config_file, config_options, overrides
from catnet.config import LabelConfig


@app.command()
@friendly_errors
@config_options(LabelConfig)
def label(
    data: Path = typer.Argument(..., metavar="DIR", help="The tagged folder (DATA_DIR)."),
    checkpoint: Path | None = typer.Option(
        None, help="Checkpoint that ranks the pictures (default: none until Teach)."
    ),
    config: Path | None = config_file(LabelConfig),
    **settings: Any,
) -> None:
    """Tag pictures in a local web page, least-sure first; review and teach the model.

    Every setting of catnet.config.LabelConfig is a flag; flags override the --config file."""
    from catnet.config import load_config
    from catnet.labelling.app import create_app
    from catnet.labelling.security import new_token
    from catnet.labelling.server import bind, serve, url_for
    from catnet.labelling.session import open_session

    cfg = load_config(LabelConfig, config, overrides(LabelConfig, settings))
    session = open_session(data, cfg, checkpoint)
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
