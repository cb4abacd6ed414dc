"""The one checkpoint format: a plain dict of tensors and primitive values.

It loads with `torch.load(path, weights_only=True)`, so a file can never run code, and it
carries everything evaluate and predict need (see README, "Checkpoint format").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import signal
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from catnet import __version__
from catnet.errors import CatnetError

FORMAT = "catnet-checkpoint"
# 2: per-checkpoint normalisation and pretrained (timm) architectures. Version 1 files (CNN and
# MLP only, same fields) still load: READABLE_VERSIONS.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
REQUIRED_KEYS = ("arch", "state_dict", "classes", "preprocessing", "threshold", "weights_sha256")


def weights_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes: detects silent corruption."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def make_checkpoint(state_dict: dict[str, torch.Tensor], **fields: Any) -> dict[str, Any]:
    weights = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "catnet_version": __version__,
        "state_dict": weights,
        "weights_sha256": weights_checksum(weights),
        **fields,
    }


@contextlib.contextmanager
def _ctrl_c_after_write() -> Iterator[None]:
    """Hold a Ctrl-C that arrives during a checkpoint write until the write is done (well under
    a second): torch's zip writer turns an interrupt mid-write into an unrelated RuntimeError."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[object] = []
    previous = signal.signal(signal.SIGINT, lambda *args: pressed.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write atomically: temp file, fsync, rename, fsync the folder. A kill at any moment
    leaves either the previous complete file or the new complete one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _ctrl_c_after_write():
        try:
            with open(tmp, "wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a catnet checkpoint; any problem is a CatnetError with a clear message."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CatnetError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise CatnetError(
                f"{path} is not a catnet checkpoint (unreadable pickle data)"
            ) from None
        # weights_only refuses any object that would need code to rebuild: nothing was run.
        raise CatnetError(
            f"refused to load {path}: it holds Python objects that would run code when loaded, "
            "which a catnet checkpoint never does"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CatnetError(
            f"{path} is not a readable checkpoint (truncated or corrupt): {exc}"
        ) from None
    except Exception as exc:
        raise CatnetError(f"{path} is not a catnet checkpoint ({type(exc).__name__})") from None
    return check_payload(payload, path)


def check_payload(payload: Any, path: Path) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CatnetError(f"{path} is not a catnet checkpoint")
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CatnetError(
            f"{path} uses checkpoint format {version}; this catnet ({__version__}) reads "
            f"formats {', '.join(map(str, READABLE_VERSIONS))}",
            hint="use the catnet version that wrote it, or retrain",
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CatnetError(
            f"{path} is an incomplete catnet checkpoint (missing {', '.join(missing)})"
        )
    if weights_checksum(payload["state_dict"]) != payload["weights_sha256"]:
        raise CatnetError(f"{path} is corrupt: its weights do not match their checksum")
    return payload
