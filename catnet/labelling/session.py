"""The state behind `catnet label`'s pages: the folders, the model in use, both queues, the
actions that can be undone, and one background job (ranking or Teach) at a time."""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catnet.config import LabelConfig, TrainConfig
from catnet.curation.corrections import Correction, HashCache, correct, sha256_of, undo
from catnet.curation.reviewed import mark_reviewed, reviewed_paths, unmark_reviewed
from catnet.errors import CatnetError
from catnet.labelling.progress import JobProgress, TeachCallbacks
from catnet.labelling.queue import (
    Tagged,
    answers_for,
    least_sure_first,
    random_order,
    review_order,
    score_and_check,
    tagged_pictures,
    untagged_pictures,
)

log = logging.getLogger("catnet.label")


@dataclass
class Action:
    kind: str  # "correct" (a move, from Label or Review) or "reviewed"
    correction: Correction | None = None
    reviewed_row: tuple[str, ...] = ()


@dataclass
class LabelSession:
    config: LabelConfig
    data_dir: Path
    unlabeled_dir: Path
    model: Any = None  # CatnetModel or None
    scores: dict[Path, float] = field(default_factory=dict)  # p(cat)
    open_set: dict[Path, float] = field(default_factory=dict)  # open-set scores, same pass
    ranked: bool = False  # scores are from the current model
    last_teach: dict[str, Any] | None = None
    job: JobProgress = field(default_factory=JobProgress)
    actions: dict[int, Action] = field(default_factory=dict)
    hashes: HashCache = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _state: threading.Lock = field(default_factory=threading.Lock)

    # --- queues ---------------------------------------------------------------------------

    def label_queue(self, limit: int) -> dict[str, Any]:
        """{items: the next `limit` untagged pictures, total, order}."""
        paths = untagged_pictures(self.unlabeled_dir)
        with self._state:
            scores, ranked = dict(self.scores), self.ranked and self.model is not None
            model, open_set = self.model, dict(self.open_set)
        answers = answers_for(model, paths, scores, open_set) if ranked else {}
        if ranked:
            odd = [p for p, a in answers.items() if a.unfamiliar]
            order = least_sure_first(paths, scores, odd)
        else:
            order = random_order(paths, self.config.seed)
        return {
            "items": [self._item(p, "unlabeled", None, answers, open_set) for p in order[:limit]],
            "total": len(paths),
            "order": "least sure first" if ranked else "random",
        }

    def review_queue(self, limit: int) -> dict[str, Any]:
        """{items: the next `limit` disputed tagged pictures, total, order}."""
        with self._state:
            scores, model, open_set = dict(self.scores), self.model, dict(self.open_set)
        if model is None:
            return {"items": [], "total": 0, "order": "needs a model: Teach first"}
        tagged = tagged_pictures(self.data_dir)
        answers = answers_for(model, [t.path for t in tagged], scores, open_set)
        found = review_order(tagged, answers, model.threshold, reviewed_paths(self.data_dir))
        return {
            "items": [
                self._item(t.path, "data", t.label, answers, open_set) for t in found[:limit]
            ],
            "total": len(found),
            "order": "most confident disagreement first",
        }

    def _item(
        self, path: Path, root: str, tag: str | None, answers: dict, open_set: dict
    ) -> dict[str, Any]:
        """One queue entry; unfamiliar is null where there is no score (no model yet, not
        ranked yet, or a checkpoint without the open-set check)."""
        base = self.unlabeled_dir if root == "unlabeled" else self.data_dir
        answer = answers.get(path)
        return {
            "root": root,
            "path": path.relative_to(base).as_posix(),
            "name": path.name,
            "p_cat": answer.p_cat if answer else None,
            "unfamiliar": answer.unfamiliar if answer else None,
            "unfamiliar_score": open_set.get(path),
            "tag": tag,
        }

    # --- answers --------------------------------------------------------------------------

    def label(self, picture: Path, label: str) -> int:
        """An answer on the Label page, or 'the tag is wrong' on Review: `catnet correct`'s
        code, moving the file. Returns the action id that undoes it. The log keeps what the
        model in use said about the picture: only a picture it had wrong is weighted up."""
        said = self.model_label(picture)
        done = correct(
            self.data_dir, [picture], label, move=True, hashes=self.hashes, model_label=said
        )
        log.info("%s -> %s", picture, done[0].dest)
        return self._remember(Action("correct", correction=done[0]))

    def model_label(self, picture: Path) -> str:
        """What the model in use says about `picture`, from the scores the queues show: cat or
        not_cat; none with no model yet; "" when unknown (not ranked by this model yet)."""
        with self._state:
            model, scores = self.model, self.scores if self.ranked else {}
            answer = answers_for(model, [picture], scores, self.open_set).get(picture)
        if model is None:
            return "none"
        # unsure never: the page's decision has no unsure band
        return answer.label if answer is not None else ""

    def confirm(self, picture: Path, label: str) -> int:
        """'The tag is right' on Review: recorded in reviewed.csv."""
        if not picture.is_file():
            raise CatnetError(f"picture not found: {picture}")
        row = mark_reviewed(self.data_dir, picture, sha256_of(picture), label)
        return self._remember(Action("reviewed", reviewed_row=row))

    def undo(self, action_id: int) -> dict[str, str]:
        with self._state:
            action = self.actions.pop(action_id, None)
        if action is None:
            raise CatnetError("nothing to undo for that answer (already undone?)")
        try:
            if action.correction is not None:
                undo(self.data_dir, action.correction)
                c = action.correction
                back = c.moved_from or c.source
                return {"root": self._root_of(back), "path": self._relative(back)}
            unmark_reviewed(self.data_dir, action.reviewed_row)
            return {"root": "data", "path": self._relative(Path(action.reviewed_row[3]))}
        except CatnetError:
            with self._state:
                self.actions[action_id] = action  # still undoable once the cause is fixed
            raise

    def _remember(self, action: Action) -> int:
        with self._state:
            action_id = next(self._ids)
            self.actions[action_id] = action
        return action_id

    def _root_of(self, path: Path) -> str:
        return "unlabeled" if path.is_relative_to(self.unlabeled_dir) else "data"

    def _relative(self, path: Path) -> str:
        base = self.unlabeled_dir if self._root_of(path) == "unlabeled" else self.data_dir
        return path.relative_to(base).as_posix()

    # --- the model and background jobs ------------------------------------------------------

    def use_model(self, model: Any) -> None:
        with self._state:
            # distances mean nothing against another model's bank and threshold
            self.model, self.ranked, self.open_set = model, False, {}

    def rank(self) -> None:
        """Score untagged and tagged pictures with the current model (in the job thread)."""
        model = self.model
        if model is None:
            return
        paths = untagged_pictures(self.unlabeled_dir) + [
            t.path for t in tagged_pictures(self.data_dir)
        ]
        self.job.update(phase="ranking", done=0, total=len(paths))
        found = score_and_check(
            model, paths, on_progress=lambda d, t: self.job.update(done=d, total=t)
        )
        with self._state:
            if self.model is model:
                self.scores, self.open_set, self.ranked = found.p_cat, found.open_set, True

    def start_rank(self) -> bool:
        return self.job.start("ranking", self.rank)

    def start_teach(self) -> bool:
        return self.job.start("teaching", self.teach_now)

    def teach_now(self) -> None:
        """One Teach, then re-rank with the new model (the job thread runs this)."""
        from catnet.labelling.teach import teach
        from catnet.predicting.prediction import load_model

        start = self.model.path if self.model is not None else None
        out_root = Path(self.config.out) if self.config.out else self.data_dir / ".catnet" / "runs"
        first = TrainConfig(
            model=self.config.model, epochs=self.config.first_epochs, seed=self.config.seed
        )
        result = teach(
            self.data_dir,
            start,
            out_root,
            self.config.epochs,
            first,
            TeachCallbacks(self.job),
        )
        self.use_model(load_model(result.checkpoint, engine=self.config.engine))
        self.last_teach = {
            "run_dir": str(result.run_dir),
            "model": str(result.checkpoint),
            "started_from": str(start) if start else None,
            "val_pictures": result.val_pictures,
            "before_acc": result.before_acc,
            "after_acc": result.after_acc,
            "seconds": round(result.seconds, 1),
        }
        self.rank()

    def describe_model(self) -> str:
        model = self.model
        return "none yet (random order)" if model is None else f"{model.path} ({model.hash})"

    def tagged(self) -> list[Tagged]:
        return tagged_pictures(self.data_dir)


def open_session(data_dir: Path, config: LabelConfig, model_path: Path | None) -> LabelSession:
    """Check the folders, load the model (if any) and return a session; CatnetError otherwise."""
    config.validate()
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise CatnetError(f"data folder not found: {data_dir}", hint="catnet label DATA_DIR")
    data_dir = data_dir.resolve()
    unlabeled = Path(config.unlabeled).expanduser() if config.unlabeled else data_dir / "unlabeled"
    if config.unlabeled and not unlabeled.is_dir():
        raise CatnetError(f"untagged folder not found: {unlabeled}")
    unlabeled = unlabeled.resolve()
    if unlabeled.is_relative_to(data_dir) and unlabeled != data_dir / "unlabeled":
        raise CatnetError(
            f"{unlabeled} is inside DATA_DIR, where every folder is a class",
            hint="use DATA_DIR/unlabeled (the default) or a folder outside DATA_DIR",
        )
    if data_dir.is_relative_to(unlabeled):
        raise CatnetError("the untagged folder cannot contain DATA_DIR")
    session = LabelSession(config, data_dir, unlabeled)
    if model_path is not None:
        from catnet.predicting.prediction import load_model

        session.use_model(load_model(model_path, engine=config.engine))
    return session
