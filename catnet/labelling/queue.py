"""Which picture to show next: the ranking that `catnet label`'s pages and
scripts/benchmark_active.py both use.

- Label queue: untagged pictures, the ones the model is least sure of first (|p(cat) - 0.5|
  ascending: the answer that teaches the most; pictures the open-set check calls unfamiliar count
  as unsure and come first), or a seeded random order while there is no model.
- Review queue: tagged pictures whose tag the model most confidently disputes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from catnet.data.folders import IMAGE_SUFFIXES, list_files, scan_dataset
from catnet.errors import CatnetError

if TYPE_CHECKING:
    import torch

    from catnet.scoring.decision import Answer


@dataclass(frozen=True)
class Tagged:
    path: Path
    label: str  # cat or not_cat, from the class folder


def untagged_pictures(folder: Path) -> list[Path]:
    """Pictures (by extension) below the untagged folder, sorted; none when it is missing."""
    return list_files(folder, IMAGE_SUFFIXES) if folder.is_dir() else []


def tagged_pictures(data_dir: Path) -> list[Tagged]:
    """Every tagged picture of DATA_DIR (all splits), with its folder's label."""
    try:
        dataset = scan_dataset(data_dir, require_both=False, allow_no_positive=True)
    except CatnetError:
        return []  # nothing tagged yet: an empty review queue, not an error
    samples = dataset.train + dataset.val + dataset.test
    return [Tagged(s.path, "cat" if s.label == 1 else "not_cat") for s in samples]


@dataclass
class PictureScores:
    """What one pass of the model says about each picture (unreadable ones are left out)."""

    p_cat: dict[Path, float]  # calibrated p(cat)
    # The open-set score (distance to the k-th nearest training picture, same forward pass);
    # empty when the check was not asked for or the checkpoint predates it.
    open_set: dict[Path, float] = field(default_factory=dict)


def score_pictures(
    model: object,
    paths: Sequence[Path],
    workers: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    cache: bool = True,
) -> dict[Path, float]:
    """p(cat) of each picture by `model` (a CatnetModel); unreadable pictures are left out."""
    return score_and_check(model, paths, workers, on_progress, cache, open_set=False).p_cat


def score_and_check(
    model: object,
    paths: Sequence[Path],
    workers: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    cache: bool = True,
    open_set: bool = True,
) -> PictureScores:
    """p(cat) and, with open_set (and a checkpoint that has the check), the open-set score of
    each picture, from one forward pass per batch of 64. With cache, pixels come through the
    decode cache training uses ($CATNET_CACHE): every Teach re-ranks the same pictures, and
    decoding them again would cost most of the time. A head-only pretrained model reads the
    backbone's stored features instead of running it (catnet.labelling.cached_scores)."""
    import numpy as np

    from catnet.data.cache import default_cache_root, load_pixels
    from catnet.labelling.cached_scores import head_only_scorer

    result = PictureScores({})
    if not paths:
        return result
    scorer = head_only_scorer(model, default_cache_root()) if cache else None
    if scorer is not None:  # a head-only pretrained model: the backbone's features are stored
        keep, plain, mirror = scorer.features(paths, workers, on_progress)
        logits, scores = scorer.logits_and_scores(plain, mirror, open_set)
        _record(result, [paths[i] for i in keep], logits, scores, float(model.temperature))  # type: ignore[attr-defined]
        return result
    table = load_pixels(
        list(paths),
        model.decode_size,  # type: ignore[attr-defined]
        cache_root=default_cache_root() if cache else None,
        workers=workers,
        on_progress=on_progress,
    )
    good = np.flatnonzero(table.ok)
    logits, scores = model.logits_and_scores_of(table.array, table.slots[good], 64, None, open_set)  # type: ignore[attr-defined]
    _record(result, [paths[i] for i in good], logits, scores, float(model.temperature))  # type: ignore[attr-defined]
    return result


def _record(result: PictureScores, paths: list[Path], logits: torch.Tensor,
            scores: torch.Tensor | None, temperature: float) -> None:  # fmt: skip
    """Add logits (n,) raw, scores (n,) open-set or None, for paths (n)."""
    from catnet.scoring.decision import probabilities

    probs = probabilities(logits, temperature).tolist()
    result.p_cat.update((p, float(q)) for p, q in zip(paths, probs, strict=True))
    if scores is not None:
        result.open_set.update((p, float(d)) for p, d in zip(paths, scores.tolist(), strict=True))


def answers_for(
    model: object, paths: Iterable[Path], p_cat: dict[Path, float], open_set: dict[Path, float]
) -> dict[Path, Answer]:
    """The model's answer (its one decision: threshold, open-set check) for each of paths
    that has a p(cat); an open-set score where every one of them has one."""
    import torch

    known = [p for p in paths if p in p_cat]
    if model is None or not known:
        return {}
    probs = torch.tensor([p_cat[p] for p in known])
    checked = all(p in open_set for p in known)
    scores = torch.tensor([open_set[p] for p in known]) if checked else None
    decided = model.decision().decide_p(probs, scores)  # type: ignore[attr-defined]
    return dict(zip(known, decided.answers(), strict=True))


def least_sure_first(
    paths: Iterable[Path], scores: dict[Path, float], unfamiliar: Iterable[Path] = ()
) -> list[Path]:
    """Scored pictures by |p - 0.5| ascending (ties by name); unscored ones after them.
    Unfamiliar pictures (unlike every training picture) count as unsure whatever their p(cat):
    they come first, least sure first among themselves."""
    paths, odd = list(paths), set(unfamiliar)
    scored = sorted(
        (p for p in paths if p in scores),
        key=lambda p: (p not in odd, abs(scores[p] - 0.5), str(p)),
    )
    return scored + [p for p in paths if p not in scores]


def random_order(paths: Iterable[Path], seed: int = 0) -> list[Path]:
    """A shuffled copy, the same for the same seed and pictures (before any model exists)."""
    ordered = sorted(paths, key=str)
    random.Random(seed).shuffle(ordered)
    return ordered


def review_order(
    tagged: Iterable[Tagged],
    answers: dict[Path, Answer],
    threshold: float,
    reviewed: set[str] | None = None,
) -> list[Tagged]:
    """Tagged pictures the model disagrees with (its answer is not the tag), most confident
    disagreement (|p(cat) - threshold|) first; reviewed ones (resolved paths) never."""
    reviewed = reviewed or set()
    disputed = []
    for item in tagged:
        answer = answers.get(item.path)
        if answer is None or str(item.path.resolve()) in reviewed:
            continue
        if answer.label != item.label:
            disputed.append((abs(answer.p_cat - threshold), item))
    disputed.sort(key=lambda pair: (-pair[0], str(pair[1].path)))
    return [item for _, item in disputed]
