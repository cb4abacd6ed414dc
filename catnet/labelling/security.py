"""Who may use `catnet label`'s page, and which files it may serve.

- A random token, printed in the URL, is needed by every request that reads pictures or
  changes files: another local user or program cannot guess it.
- Requests that change files need it in a custom header (X-Catnet-Token) of a POST. A page on
  another site cannot send that header without a CORS preflight, which this app never grants,
  and an Origin header, when present, must be this app's own.
- The Host header must name this server (127.0.0.1 / localhost / the bound host): a DNS-
  rebinding site that points its own name at 127.0.0.1 is refused.
- Picture paths are relative to DATA_DIR or the untagged folder; after resolving symlinks they
  must still be inside it, name a picture file and pass no hidden folder (.catnet/).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path, PurePosixPath

from catnet.data.folders import IMAGE_SUFFIXES

TOKEN_HEADER = "x-catnet-token"
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
log = logging.getLogger("catnet.label")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_ok(given: str | None, token: str) -> bool:
    return bool(given) and secrets.compare_digest(given.encode(), token.encode())  # type: ignore[union-attr]


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """Host header values to accept; None (any) when bound to every interface, where the
    machine's own names cannot be listed; the token still guards every request then."""
    if host in ("0.0.0.0", "::", ""):
        return None
    names = {host, *LOOPBACK} if host in LOOPBACK or host == "::1" else {host}
    return {f"{name}:{port}" for name in names} | names


def origin_ok(origin: str | None, host_header: str) -> bool:
    """No Origin (same-origin GETs, curl) is fine; otherwise it must be this very server."""
    if not origin:
        return True
    return origin in (f"http://{host_header}", f"https://{host_header}")


def safe_picture(base: Path, relative: str, client: str = "?") -> Path | None:
    """The picture `relative` names inside base, or None (logged) for anything else: absolute
    paths, '..', hidden parts, symlinks leading outside, non-pictures, missing files."""
    reason = _refusal(base, relative)
    if reason:
        log.warning("refused picture path %r from %s: %s", relative, client, reason)
        return None
    return (base / relative).resolve()


def _refusal(base: Path, relative: str) -> str:
    if not relative or "\x00" in relative or "\\" in relative:
        return "empty or odd characters"
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith("~"):
        return "absolute path"
    if any(part in ("..", ".") or part.startswith(".") for part in pure.parts):
        return "'..' or a hidden part"
    if pure.suffix.lower() not in IMAGE_SUFFIXES:
        return "not a picture"
    root = base.resolve()
    try:
        real = (root / pure).resolve(strict=True)
    except (OSError, RuntimeError):
        return "no such file"
    if not real.is_relative_to(root):
        return "leads outside the folder"
    if not real.is_file():
        return "not a file"
    return ""
