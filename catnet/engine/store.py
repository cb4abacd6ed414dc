"""The engine's cache for one checkpoint, torch-free: a folder named after the SHA-256 of the
checkpoint file's bytes, so an edited or replaced checkpoint never meets a stale graph.

    <cache root>/engine-v1/<sha256 of the checkpoint, 32 hex>/
        card.json           what answering needs besides the network (predicting.ModelCard)
        answer.xml/.bin     the answer graph (build.AnswerGraph), without flip TTA
        answer-tta.xml/.bin the same with flip TTA (built when first asked for)
        score.xml/.bin      the open-set score graph (absent: the checkpoint has no check)
        blobs/              OpenVINO's compiled graphs for this CPU (its own cache)
Files appear by atomic rename: a reader sees a whole graph or none, and two processes building
the same graph both finish (the second rename wins, with the same bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catnet.data.cache import default_cache_root
from catnet.engine.runtime import EngineUnavailable

VERSION = 1


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a 20 MB checkpoint: ~15 ms)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def engine_root(cache_root: Path | None = None) -> Path:
    """$CATNET_ENGINE_CACHE, else engine-v1 in the cache folder (cache_root, else the default
    one). The variable wins over a --cache-dir: a graph depends only on its key, so one folder
    can serve every cache (the tests share one across their private cache folders)."""
    if os.environ.get("CATNET_ENGINE_CACHE"):
        return Path(os.environ["CATNET_ENGINE_CACHE"]).expanduser()
    return (cache_root or default_cache_root()) / f"engine-v{VERSION}"


class EngineStore:
    """key: what the graphs depend on (a checkpoint's digest; for training's feature graph,
    the feature store's tag: backbone, frozen weights, size, cut)."""

    def __init__(self, key: str, root: Path | None = None) -> None:
        self.dir = engine_root(root) / key
        self.blobs = self.dir / "blobs"

    @classmethod
    def of_checkpoint(cls, checkpoint: Path, root: Path | None = None) -> EngineStore:
        return cls(file_digest(checkpoint)[:32], root)

    def graph(self, name: str) -> Path:
        return self.dir / f"{name}.xml"

    def has(self, name: str) -> bool:
        return self.graph(name).is_file() and self.graph(name).with_suffix(".bin").is_file()

    def card(self) -> dict[str, Any] | None:
        """The stored card, None when there is none yet (or it is unreadable: built again)."""
        try:
            card = json.loads((self.dir / "card.json").read_text())
        except (OSError, ValueError):
            return None
        return card if isinstance(card, dict) else None

    def write_card(self, card: dict[str, Any]) -> None:
        self._publish(lambda tmp: (tmp / "card.json").write_text(json.dumps(card)), ["card.json"])

    def write_graph(self, name: str, save: Callable[[Path], None]) -> None:
        """save(xml path) writes the graph into a private folder; then it is renamed in."""
        self._publish(lambda tmp: save(tmp / f"{name}.xml"), [f"{name}.bin", f"{name}.xml"])

    def _publish(self, write: Callable[[Path], Any], names: list[str]) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.dir, prefix=".building-") as tmp:
                write(Path(tmp))
                for name in names:  # the .xml last: has() then sees both files or neither
                    os.replace(Path(tmp) / name, self.dir / name)
        except OSError as exc:
            raise EngineUnavailable(
                f"cannot write the engine cache in {self.dir} ({exc.strerror or exc})"
            ) from None
