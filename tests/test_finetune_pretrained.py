"""`catnet finetune` (and so the label page's Teach) keeps its promise on the default model: a
head-only pretrained model learns the pictures that were corrected, with its default epochs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import write_class
from test_learning_loop import odd_cat

pytestmark = pytest.mark.slow  # two pretrained trainings (about 20 s)

ODD = 10  # red-framed dog drawings: cats in this world, first tagged as dogs


def labels_of(checkpoint: Path, paths: list[Path]) -> list[str]:
    from catnet.predicting.prediction import load_model

    return [p.label for p in load_model(checkpoint, device="cpu").predict(paths)]


def test_a_head_only_finetune_learns_the_corrections(tmp_path: Path) -> None:
    from catnet.config import TrainConfig
    from catnet.curation.corrections import correct
    from catnet.training.loop import FINETUNE_HEAD_EPOCHS, finetune, train

    data = tmp_path / "data"
    write_class(data / "cats", "cats", 48, 32)
    write_class(data / "dogs", "dogs", 48, 32)
    odd = [data / "dogs" / f"odd_{i}.png" for i in range(ODD)]
    for i, path in enumerate(odd):
        odd_cat(i, 32).save(path)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "first"), image_size=64, epochs=30,
                      device="cpu", workers=1)  # fmt: skip
    first = train(cfg).best_checkpoint
    before = labels_of(first, odd)
    assert before.count("not_cat") >= ODD - 3, before  # it learnt (most of) the wrong tags

    moved = [c.dest for c in correct(data, odd, "cat")]
    second = finetune(first, data, out=str(tmp_path / "finetuned"))  # the default epochs
    with (second.run_dir / "metrics.csv").open(newline="") as fh:
        epochs = len(list(csv.DictReader(fh)))
    # 96 + 3 x 10 extra copies of the corrections: minibatch epochs, not the full-batch fit
    assert epochs == FINETUNE_HEAD_EPOCHS
    after = labels_of(second.best_checkpoint, moved)
    assert after.count("cat") >= 0.9 * ODD, (before, after)
