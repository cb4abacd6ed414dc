"""The web app of `catnet label`: routes, the token and origin checks, static files.

GET  /?token=T              the page (plain HTML/CSS/JS from catnet/labelling/static)
GET  /api/state             model in use, job progress, last Teach, counts
GET  /api/queue?kind=K      next pictures of the label or review queue
GET  /api/picture?root=R&path=P[&token=T]   a picture inside DATA_DIR (R=data) or unlabeled/
GET  /api/heatmap?root=R&path=P             the explain heatmap, where that API exists
POST /api/label  {root, path, label}        move an untagged picture into a class folder
POST /api/review {path, verdict}            wrong: fix the folder's tag; right: reviewed.csv
POST /api/undo   {action}                   take one answer back exactly
POST /api/teach                             start a Teach
POST /api/try    (picture bytes)            p(cat) (and heatmap) of any picture
Every /api request needs the token; POSTs need it in the X-Catnet-Token header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from catnet.data.folders import POSITIVE_NAMES
from catnet.errors import CatnetError
from catnet.labelling import pictures
from catnet.labelling.security import (
    TOKEN_HEADER,
    allowed_hosts,
    origin_ok,
    safe_picture,
    token_ok,
)
from catnet.labelling.session import LabelSession

log = logging.getLogger("catnet.label")
Handler = Callable[[Request], Awaitable[Response]]
LABELS = {"c": "cat", "cat": "cat", "n": "not_cat", "not_cat": "not_cat"}


def create_app(session: LabelSession, token: str, host: str, port: int) -> Starlette:
    """The Starlette app for one session; `token` is the secret the printed URL carries."""
    return Handlers(session, token, allowed_hosts(host, port)).app()


class Handlers:
    """One method per route; `guarded` adds the token, Host and Origin checks to each."""

    def __init__(self, session: LabelSession, token: str, hosts: set[str] | None) -> None:
        self.session, self.token, self.hosts = session, token, hosts

    def guarded(self, handler: Handler, write: bool = False) -> Handler:
        async def wrapper(request: Request) -> Response:
            refusal = _refuse(request, self.token, self.hosts, write)
            if refusal:
                log.warning("refused %s %s: %s", request.method, request.url.path, refusal)
                return PlainTextResponse(f"forbidden: {refusal}", status_code=403)
            try:
                return await handler(request)
            except CatnetError as exc:
                return AsciiJSON({"error": exc.message}, status_code=409)

        return wrapper

    async def index(self, request: Request) -> Response:
        page = resources.files("catnet.labelling").joinpath("static/index.html").read_text()
        return Response(page, media_type="text/html", headers=_NO_STORE | _CSP)

    async def state(self, request: Request) -> Response:
        return _json(
            {
                "model": self.session.describe_model(),
                "job": self.session.job.snapshot(),
                "last_teach": self.session.last_teach,
                "ranked": self.session.ranked,
                "heatmaps": pictures.has_explain(self.session.model),
                "data_dir": str(self.session.data_dir),
                "unlabeled_dir": str(self.session.unlabeled_dir),
            }
        )

    async def queue(self, request: Request) -> Response:
        kind, limit = request.query_params.get("kind", "label"), 200
        make = self.session.review_queue if kind == "review" else self.session.label_queue
        return _json(await asyncio.to_thread(make, limit))

    def picture_path(self, request: Request, root: str, path: str) -> Path | None:
        base = {"data": self.session.data_dir, "unlabeled": self.session.unlabeled_dir}.get(root)
        client = request.client.host if request.client else "?"
        if base is None:
            log.warning("refused picture root %r from %s", root, client)
            return None
        return safe_picture(base, path, client)

    async def picture(self, request: Request) -> Response:
        q = request.query_params
        found = self.picture_path(request, q.get("root", ""), q.get("path", ""))
        if found is None:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(found, headers=_NO_STORE)

    async def heatmap(self, request: Request) -> Response:
        q = request.query_params
        found = self.picture_path(request, q.get("root", ""), q.get("path", ""))
        if found is None or not pictures.has_explain(self.session.model):
            return PlainTextResponse("not found", status_code=404)
        png = await asyncio.to_thread(pictures.heatmap_png_of_file, self.session.model, found)
        return Response(png, media_type="image/png", headers=_NO_STORE)

    async def label(self, request: Request) -> Response:
        body = await _body(request)
        found = self.picture_path(request, "unlabeled", str(body.get("path", "")))
        answer = LABELS.get(str(body.get("label", "")))
        if found is None or answer is None:
            return AsciiJSON({"error": "no such untagged picture or label"}, status_code=404)
        action = await asyncio.to_thread(self.session.label, found, answer)
        return _json({"action": action})

    async def review(self, request: Request) -> Response:
        body = await _body(request)
        found = self.picture_path(request, "data", str(body.get("path", "")))
        verdict = body.get("verdict")
        if found is None or verdict not in ("wrong", "right"):
            return AsciiJSON({"error": "no such tagged picture or verdict"}, status_code=404)
        tag = "cat" if found.parent.name.lower() in POSITIVE_NAMES else "not_cat"  # its folder's
        if verdict == "right":
            action = await asyncio.to_thread(self.session.confirm, found, tag)
        else:
            other = "not_cat" if tag == "cat" else "cat"
            action = await asyncio.to_thread(self.session.label, found, other)
        return _json({"action": action})

    async def undo(self, request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body.get("action"), int):
            return AsciiJSON({"error": "action must be a number"}, status_code=400)
        return _json({"restored": await asyncio.to_thread(self.session.undo, body["action"])})

    async def teach(self, request: Request) -> Response:
        if not self.session.start_teach():
            return AsciiJSON({"error": "a job is already running"}, status_code=409)
        return _json({"started": True})

    async def try_picture(self, request: Request) -> Response:
        data = await request.body()
        if len(data) > self.session.config.max_upload_mb * 1e6:
            return AsciiJSON({"error": "picture too large"}, status_code=413)
        if self.session.model is None:
            return AsciiJSON({"error": "no model yet: Teach first"}, status_code=409)
        return _json(await asyncio.to_thread(pictures.try_bytes, self.session.model, data))

    def app(self) -> Starlette:
        routes = [
            Route("/", self.guarded(self.index)),
            Route("/api/state", self.guarded(self.state)),
            Route("/api/queue", self.guarded(self.queue)),
            Route("/api/picture", self.guarded(self.picture)),
            Route("/api/heatmap", self.guarded(self.heatmap)),
            Route("/api/label", self.guarded(self.label, write=True), methods=["POST"]),
            Route("/api/review", self.guarded(self.review, write=True), methods=["POST"]),
            Route("/api/undo", self.guarded(self.undo, write=True), methods=["POST"]),
            Route("/api/teach", self.guarded(self.teach, write=True), methods=["POST"]),
            Route("/api/try", self.guarded(self.try_picture, write=True), methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("catnet.labelling", "static")]), name="static"),
        ]
        return Starlette(routes=routes)


# The page loads nothing from elsewhere, and no other site may frame it (clickjacking).
_CSP = {
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",  # the token in the URL never leaks through Referer
}
_NO_STORE = {"cache-control": "no-store"}


def _refuse(request: Request, token: str, hosts: set[str] | None, write: bool) -> str:
    host_header = request.headers.get("host", "")
    if hosts is not None and host_header not in hosts:
        return f"unexpected Host {host_header!r}"
    if not origin_ok(request.headers.get("origin"), host_header):
        return "request from another site"
    if token_ok(request.headers.get(TOKEN_HEADER), token):
        return ""
    if write:  # a query token is not enough to change files: a custom header is needed
        return "missing or wrong X-Catnet-Token header"
    return "" if token_ok(request.query_params.get("token"), token) else "missing or wrong token"


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise CatnetError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise CatnetError("the request body must be a JSON object")
    return body


class AsciiJSON(JSONResponse):
    """ASCII: a non-UTF-8 name's surrogate escapes become \\udcXX, not a 500 (UTF-8 fails)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def _json(value: Any) -> AsciiJSON:
    return AsciiJSON(_finite(value), headers=_NO_STORE)


def _finite(value: Any) -> Any:
    """NaN and infinities become null: strict JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
