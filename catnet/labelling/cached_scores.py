"""Scores of a head-only pretrained model from the backbone features training stored.

A `--model pretrained` run with train_stages 0 trains only the head: the backbone stays the
frozen ImageNet one, and training keeps its pooled features of every picture and of its mirror
image in <cache>/features-v2 (catnet.training.features). Re-ranking the Label queue after every
Teach would run that same frozen backbone over the same hundreds of untagged pictures again;
reading their stored features instead leaves one linear layer per picture. Pictures without
stored features are computed once here (with the mirror, as training does) and stored.

The numbers are CatnetModel's up to rounding: stored features are fp16 (the very features the
head and its threshold were fitted on), and CatnetModel runs the backbone with batch norm folded
into the convs. Flip-TTA and the open-set check use the mirror features exactly as
CatnetModel's two passes do (mean of the two logits; mean of the two feature vectors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catnet.data.cache import load_pixels
from catnet.models.pretrained import PretrainedNet, trains_head_only
from catnet.training.features import FeatureStore, FrozenPass, feature_store, frozen_features


@dataclass
class HeadOnlyScorer:
    model: Any  # a CatnetModel whose network is a PretrainedNet with train_stages 0
    store: FeatureStore
    frozen: FrozenPass  # the backbone's pass, on the engine when the model has one

    @property
    def net(self) -> PretrainedNet:
        return self.model.module

    def features(
        self,
        paths: Sequence[Path],
        workers: int = 0,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """(indices of the readable paths, their plain (n, F) and mirror (n, F) fp32 features),
        from the store where it has them, else computed (and stored)."""
        found: list[tuple[torch.Tensor, torch.Tensor] | None] = [self.store.get(p) for p in paths]
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            m = self.model
            table = load_pixels(
                [paths[i] for i in todo], m.decode_size, cache_root=self.store.dir.parent.parent,
                workers=workers, on_progress=on_progress,
            )  # fmt: skip
            good = np.flatnonzero(table.ok)
            plain, mirror = frozen_features(self.frozen, table.array, table.slots[good])
            for j, g in enumerate(good.tolist()):
                i = todo[g]
                self.store.put(paths[i], plain[j], mirror[j])  # type: ignore[index]
                # rounded as stored, so a picture scores the same whether it was stored or not
                found[i] = (plain[j].half().float(), mirror[j].half().float())  # type: ignore[index]
        if on_progress:
            on_progress(len(paths), len(paths))
        keep = [i for i, f in enumerate(found) if f is not None]
        if not keep:
            return [], torch.zeros(0), torch.zeros(0)
        plain_all = torch.stack([found[i][0] for i in keep])  # type: ignore[index]
        mirror_all = torch.stack([found[i][1] for i in keep])  # type: ignore[index]
        return keep, plain_all, mirror_all

    @torch.no_grad()
    def logits_and_scores(
        self, plain: torch.Tensor, mirror: torch.Tensor, open_set: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What CatnetModel.logits_and_scores gives for the pictures behind these features:
        raw logits (n,) and open-set scores (n,) or None."""
        m, head = self.model, self.net.head
        device = head.weight.device
        feats = plain.to(device)
        logits = head(feats).squeeze(1).float()
        if m.tta:
            feats = (feats + mirror.to(device)) / 2
            logits = (logits + head(mirror.to(device)).squeeze(1).float()) / 2
        check = m.open_set if open_set else None
        scores = check.scores(feats.float()).cpu() if check is not None else None
        return logits.cpu(), scores


def head_only_scorer(model: Any, cache_root: Path) -> HeadOnlyScorer | None:
    """A scorer for a pretrained model that trained only its head; None for any other model
    (its scores need the whole network)."""
    payload = getattr(model, "payload", None)
    if not isinstance(payload, dict) or not isinstance(model.module, PretrainedNet):
        return None
    if not trains_head_only(payload):
        return None
    engine = "torch" if getattr(model, "engine", None) is None else "auto"
    frozen = FrozenPass(model.module, 0, model.image_size, model.mean, model.std, model.compute,
                        engine, cache_root)  # fmt: skip
    store = feature_store(model.module, payload["arch"]["backbone"], model.image_size, 0,
                          frozen.name, cache_root)  # fmt: skip
    return HeadOnlyScorer(model, store, frozen)
