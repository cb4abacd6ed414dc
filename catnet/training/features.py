"""Frozen-backbone features, computed once per picture (and kept on disk, like the pixels).

Training a pretrained network on a CPU spends almost all its time in the frozen part: a full
training step of EfficientNet-Lite0 at 224 px runs at ~13 pictures/s on 2 cores, its forward
pass alone at ~130. So the frozen part runs once per picture (and once on its mirror image, the
one augmentation that survives caching), and the trained part learns from the stored outputs
for as many epochs as it needs, in seconds.

Disk layout (one folder per backbone, weights, size and cut; optional, never required):
    <cache_root>/features-v2/<tag>/<sha1(file key)>.pt   {"plain": (…), "mirror": (…)} fp16
The file key is the pixel cache's "abs path | bytes | mtime ns", so an edited photo misses.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from catnet.data.augment import prepare_eval
from catnet.data.cache import default_cache_root, file_key
from catnet.engine.runtime import ENGINE_BATCH, Compiled, EngineUnavailable, batched, precision
from catnet.engine.store import EngineStore
from catnet.errors import CatnetError, WriteFailed, writing
from catnet.models.checkpoint import weights_checksum
from catnet.models.pretrained import DEFAULT_BACKBONE
from catnet.runtime.compute import Compute, batches_of
from catnet.runtime.files import atomic_write

if TYPE_CHECKING:
    from catnet.config import TrainConfig
    from catnet.models.pretrained import PretrainedNet
    from catnet.training.prepare import PreparedData
    from catnet.training.results import TrainCallbacks

# 2: version 1 files could hold batch-statistics features (a train-mode bug); never reuse them
FEATURES_VERSION = 2


class FrozenPass:
    """uint8 pictures (B, S, S, 3) -> the frozen part's outputs (B, ...) for them and for their
    mirror images, fp32 on the CPU: on the inference engine where it runs (engine "auto" says
    once why not where it does not, and uses PyTorch), else PyTorch. `name` says which, for
    the feature store's tag: features from the two differ in the last bf16 bits."""

    def __init__(self, net: PretrainedNet, stages: int, image_size: int, mean: tuple,
                 std: tuple, compute: Compute, engine: str = "auto", root: Path | None = None,
                 on_message: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.net, self.stages, self.root = net, stages, root
        self.frozen = lambda x: net.frozen_part(x, stages)
        self.image_size, self.mean, self.std, self.compute = image_size, mean, std, compute
        self.name = compute.name.replace("/", "-")
        self.graphs: dict[int, Compiled] = {}  # by the side of the pictures it takes
        self.engine = engine
        if engine == "torch" or (engine == "auto" and compute.device.type != "cpu"):
            self.engine = "torch"
            return
        try:
            self.name = f"openvino-{precision()}"
        except EngineUnavailable as exc:
            self._fallback(exc, on_message)

    def _fallback(self, exc: EngineUnavailable, on_message: Callable[[str], None] | None) -> None:
        if self.engine == "openvino":
            raise CatnetError(f"cannot use the OpenVINO engine: {exc}") from None
        self.engine, self.name = "torch", self.compute.name.replace("/", "-")
        if on_message:
            on_message(f"running PyTorch instead of the inference engine: {exc}")

    @torch.no_grad()
    def __call__(self, batch_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        side = int(batch_u8.shape[1])
        if self.engine != "torch" and side not in self.graphs:
            try:
                self.graphs[side] = _feature_graph(self, side)
            except EngineUnavailable as exc:  # a graph that does not compile: say so, go on
                self._fallback(exc, None)
        if self.engine != "torch":
            plain, mirror = batched(self.graphs[side], batch_u8.numpy(), ENGINE_BATCH)
            return torch.from_numpy(plain), torch.from_numpy(mirror)
        x = prepare_eval(batch_u8.to(self.compute.device), self.image_size, self.mean, self.std)
        with self.compute.autocast():
            return self.frozen(x).float().cpu(), self.frozen(x.flip(3)).float().cpu()


def _feature_graph(frozen: FrozenPass, side: int) -> Compiled:
    """The frozen part as an engine graph for side-px pictures, cached under everything it
    depends on (frozen weights, sizes, cut, normalisation)."""
    from catnet.engine.build import FeatureGraph, save_graph

    f = frozen
    frozen_state = {k: v for k, v in f.net.state_dict().items() if not k.startswith("head.")}
    key = "-".join([
        "features", weights_checksum(frozen_state)[:16], f"in{side}", f"s{f.image_size}",
        f"cut{f.stages}",
        hashlib.sha1(repr((f.mean, f.std)).encode(), usedforsecurity=False).hexdigest()[:8],
    ])  # fmt: skip
    store = EngineStore(key, f.root)
    if not store.has("features"):
        example = torch.zeros(2, side, side, 3, dtype=torch.uint8)
        graph = FeatureGraph(f.net, f.stages, f.image_size, f.mean, f.std)
        store.write_graph("features", lambda xml: save_graph(graph, example, xml))
    return Compiled(store.graph("features"), store.blobs)


def frozen_features(
    frozen: FrozenPass,
    pixels: np.ndarray,
    slots: np.ndarray,
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """frozen() for pixels[slots] (uint8 (n, S, S, 3)) -> fp32 (n, ...) on the CPU for the
    pictures and for their mirror images."""
    plain, flipped = [], []
    for part in batches_of(len(slots), batch_size):
        p, m = frozen(torch.from_numpy(np.ascontiguousarray(pixels[slots[part]])))
        plain.append(p)
        flipped.append(m)
        if on_progress:
            on_progress(part.stop, len(slots))
    if not plain:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(plain), torch.cat(flipped)


class FeatureStore:
    """Per-picture feature files; `tag` names everything the features depend on besides the
    picture (backbone, weights checksum, size, cut, precision). Like the pixel cache, an
    optimisation: when its folder cannot be written it says so once (on_message) and the run
    goes on with features kept in memory."""

    def __init__(
        self, root: Path, tag: str, on_message: Callable[[str], None] | None = None
    ) -> None:
        self.dir = Path(root) / f"features-v{FEATURES_VERSION}" / tag
        self.on_message = on_message
        self.writable = True

    def _file(self, key: str) -> Path:
        return self.dir / f"{hashlib.sha1(os.fsencode(key), usedforsecurity=False).hexdigest()}.pt"

    def get(self, path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        key = file_key(path)
        if key is None:
            return None
        try:
            entry = torch.load(self._file(key), map_location="cpu", weights_only=True)
            if entry.get("key") != key:
                return None
            return entry["plain"].float(), entry["mirror"].float()
        except Exception:  # missing, half-written or foreign: compute again
            return None

    def put(self, path: Path, plain: torch.Tensor, mirror: torch.Tensor) -> None:
        key = file_key(path)
        if key is None or not self.writable:
            return
        entry = {"key": key, "plain": plain.half().clone(), "mirror": mirror.half().clone()}
        try:
            with writing("the feature cache", self.dir):
                self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self._file(key), lambda fh: torch.save(entry, fh), "the feature cache")
        except WriteFailed as exc:  # a full or read-only disk only costs speed
            self.writable = False
            if self.on_message:
                self.on_message(
                    f"cannot use the feature cache in {self.dir} ({exc.reason}): keeping "
                    "features in memory this time"
                )


def cached_features(
    frozen: FrozenPass,
    paths: list[Path],
    pixels: np.ndarray,
    slots: np.ndarray,
    store: FeatureStore | None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain, mirror) features of pixels[slots] (paths[i] is the file behind slots[i]),
    reading what the store has and computing (then storing) the rest."""
    found = [store.get(p) for p in paths] if store else [None] * len(paths)
    todo = np.array([i for i, f in enumerate(found) if f is None], dtype=np.int64)
    plain_new, mirror_new = frozen_features(frozen, pixels, slots[todo], on_progress=on_progress)
    for j, i in enumerate(todo.tolist()):
        found[i] = (plain_new[j], mirror_new[j])  # type: ignore[index]
        if store:
            store.put(paths[i], plain_new[j], mirror_new[j])  # type: ignore[index]
    if not found:
        return torch.zeros(0), torch.zeros(0)
    plain = torch.stack([f[0] for f in found])  # type: ignore[index]
    mirror = torch.stack([f[1] for f in found])  # type: ignore[index]
    return plain, mirror


def feature_store(net: PretrainedNet, backbone: str, size: int, stages: int, computed_by: str,
                  root: Path, on_message: Callable[[str], None] | None = None,
                  ) -> FeatureStore:  # fmt: skip
    """The on-disk store for this frozen part: the tag names everything features depend on
    besides the picture (backbone, frozen weights, size, cut, what computed them:
    FrozenPass.name)."""
    frozen_state = {k: v for k, v in net.state_dict().items() if not k.startswith("head.")}
    tag = "-".join([
        backbone, weights_checksum(frozen_state)[:16], f"s{size}", f"cut{stages}",
        computed_by,
    ])  # fmt: skip
    return FeatureStore(root, tag, on_message)


class Features:
    """Frozen-part outputs of the training and validation pictures: (n, ...) fp32 tensors."""

    def __init__(self, net: PretrainedNet, stages: int, data: PreparedData, cfg: TrainConfig,
                 compute: Compute, cb: TrainCallbacks) -> None:  # fmt: skip
        root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root()
        name = cfg.backbone or DEFAULT_BACKBONE
        frozen = FrozenPass(net, stages, data.eval_size, data.mean, data.std, compute,
                            cfg.engine, root if cfg.cache_dir else None, cb.on_message)  # fmt: skip
        store = (
            feature_store(net, name, data.eval_size, stages, frozen.name, root, cb.on_message)
            if cfg.cache
            else None
        )
        cb.on_message(f"computing the frozen backbone's features at {data.eval_size} px")

        def run(paths: list[Path], slots: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            return cached_features(frozen, paths, data.pixels, slots, store, cb.on_decode)

        self.train, self.train_mirror = run(data.train_paths, data.train_slots)
        self.val, self.val_mirror = run(data.val_paths, data.val_slots)


def logits_on(net: PretrainedNet, stages: int, plain: torch.Tensor, mirror: torch.Tensor | None,
              compute: Compute, batch_size: int = 256) -> torch.Tensor:  # fmt: skip
    """(n,) logits of the trained part on stored features; with mirror, the mean of both."""
    was_training = net.training
    net.eval()
    out = []
    with torch.no_grad(), compute.autocast():
        for part in batches_of(len(plain), batch_size):
            logit = net.trainable_part(plain[part].to(compute.device), stages).float()
            if mirror is not None:
                logit = (logit + net.trainable_part(mirror[part].to(compute.device), stages)) / 2
            out.append(logit.float().cpu())
    net.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)
