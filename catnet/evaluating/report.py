"""`catnet evaluate --report DIR`: one offline HTML page to look at, and a mistakes.csv to fix.

The page has to open anywhere (a mail attachment, a machine without network), so it is a
single file: CSS in a <style> tag, plots and thumbnails as base64 data: URIs, and a
Content-Security-Policy that forbids the browser from fetching anything else.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import torch
from PIL import Image

from catnet.data.folders import Sample
from catnet.data.pixels import decode_square
from catnet.errors import writing
from catnet.explaining.heatmaps import data_uri
from catnet.predicting.outputs import RowWriter, csv_value
from catnet.runtime.files import atomic_write_text
from catnet.scoring.calibration import expected_calibration_error
from catnet.scoring.decision import probabilities
from catnet.scoring.metrics import pr_curve, roc_curve

if TYPE_CHECKING:  # evaluation pulls in the model code; the report only reads its result
    from matplotlib.figure import Figure

    from catnet.evaluating.evaluation import EvaluationResult

THUMB = 128  # px, the side of the report's thumbnails (and of their heatmaps)
BINS = 15  # expected_calibration_error's default, so the diagram shows what the ECE measures
# predict --output's columns (label: the model's answer), then truth, the folder's tag: edit it
# where the folder is wrong for `catnet correct --from`; an unedited file changes nothing.
CSV_COLUMNS = (*RowWriter.COLUMNS, "truth")
LABELS = ("not_cat", "cat")  # by label: 0, 1
# The metrics shown, in order, with the words a reader needs rather than the JSON keys.
METRIC_NAMES = {
    "n": "pictures", "accuracy": "accuracy", "precision": "precision", "recall": "recall",
    "f1": "F1", "roc_auc": "ROC AUC", "pr_auc": "average precision (PR AUC)",
    "threshold": "threshold", "ece": "ECE after calibration",
    "ece_uncalibrated": "ECE before calibration", "temperature": "temperature",
    "unsure_rate": "unsure rate", "sure_accuracy": "accuracy when sure",
    "skipped": "unreadable files skipped",
}  # fmt: skip
SHOWN_SKIPPED = 500  # unreadable files listed on the page; the rest are counted


@dataclass(frozen=True)
class Mistake:
    sample: Sample
    p_cat: float
    predicted: int  # 1 = cat
    confidence: float  # p(predicted label): how sure the model was of its wrong answer
    heatmap: str = ""  # data: URI of where it looked (report_heatmaps), "" = none
    unfamiliar: bool | None = None  # flagged by the open-set check (so never called cat)
    score: float | None = None  # its open-set score


def find_mistakes(result: EvaluationResult) -> list[Mistake]:
    """Every misclassified picture, most confident first (ties by path, for stable output)."""
    probs = result.probs.detach().float().cpu()
    n = len(probs)
    flags = [None] * n if result.unfamiliar is None else result.unfamiliar.tolist()
    scores = [None] * n if result.scores is None else result.scores.tolist()
    # The decision's answers, as the confusion matrix counts them (and predict labels them).
    predicted = result.cat.long().tolist()
    out = []
    for sample, p, pred, flag, score in zip(
        result.samples, probs.tolist(), predicted, flags, scores, strict=True
    ):
        if pred != sample.label:
            confidence = p if pred else 1.0 - p
            out.append(Mistake(sample, p, pred, confidence, unfamiliar=flag, score=score))
    return sorted(out, key=lambda m: (-m.confidence, str(m.sample.path)))


def write_mistakes_csv(mistakes: list[Mistake], model: str, threshold: float, path: Path) -> Path:
    # surrogateescape like predict's RowWriter: odd file names survive the round trip.
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for m in mistakes:
        score = None if m.score is None else round(m.score, 6)
        row = (m.sample.path, LABELS[m.predicted], round(m.p_cat, 6), "", model, threshold,
               m.unfamiliar, score, LABELS[m.sample.label])  # fmt: skip
        writer.writerow([csv_value(v) for v in row])
    atomic_write_text(path, text.getvalue(), errors="surrogateescape", what="the report")
    return path


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return data_uri(buf.getvalue())


def _figure(height: float = 3.6, rows: int = 1, ratios: list[int] | None = None) -> Any:
    # Figure without pyplot: no window, no global backend switch, nothing to close or leak.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.4, height))
    # Fixed margins, not constrained layout: the labels are known, and it halves drawing time.
    top, bottom = 1 - 0.4 / height, 0.6 / height
    fig.subplots_adjust(left=0.16, right=0.97, top=top, bottom=bottom, hspace=0.25)
    return fig, fig.subplots(rows, 1, height_ratios=ratios, squeeze=False)[:, 0]


# Axis labels per plot: (x, y, legend corner).
AXES = {
    "roc": ("false positive rate (not-cats called cat)", "recall (cats found)", "lower right"),
    "pr": ("recall (cats found)", "precision (cat calls that are right)", "lower left"),
    "rel": ("", "observed cat frequency", "upper left"),
}


def _finish(ax: Any, kind: str, title: str) -> None:
    xlabel, ylabel, corner = AXES[kind]
    ax.set_title(title, fontsize=10)
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc=corner, fontsize="small")


def _roc_png(probs: torch.Tensor, labels: torch.Tensor, c: dict[str, int], auc: float) -> str:
    curve = roc_curve(probs, labels)
    fig, (ax,) = _figure()
    ax.plot(curve["fpr"], curve["tpr"], color="tab:blue", label="model")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    point = (c["fp"] / (c["fp"] + c["tn"]), c["tp"] / (c["tp"] + c["fn"]))
    ax.plot(*point, "o", color="tab:red", label="at the threshold")
    _finish(ax, "roc", f"ROC curve (AUC {auc:.4f})")
    return _png(fig)


def _pr_png(probs: torch.Tensor, labels: torch.Tensor, c: dict[str, int]) -> str:
    curve = pr_curve(probs, labels)
    fig, (ax,) = _figure()
    # Step at each recall, the way average precision adds it up.
    recall, precision = [0.0, *curve["recall"]], [curve["precision"][0], *curve["precision"]]
    ax.step(recall, precision, where="pre", color="tab:blue", label="model")
    ax.axhline(float(labels.float().mean()), color="grey", linestyle=":", label="chance")
    if c["tp"] + c["fp"]:
        point = (c["tp"] / (c["tp"] + c["fn"]), c["tp"] / (c["tp"] + c["fp"]))
        ax.plot(*point, "o", color="tab:red", label="at the threshold")
    _finish(ax, "pr", f"Precision-recall (AP {curve['average_precision']:.4f})")
    return _png(fig)


def _bins(probs: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float], list[int]]:
    """Mean p(cat), observed cat frequency and count per non-empty bin, binned like the ECE."""
    edges = torch.linspace(0, 1, BINS + 1)
    index = torch.bucketize(probs, edges[1:-1], right=True)
    means, freqs, counts = [], [], []
    for b in range(BINS):
        mask = index == b
        counts.append(int(mask.sum()))
        if mask.any():
            means.append(float(probs[mask].mean()))
            freqs.append(float(labels[mask].mean()))
    return means, freqs, counts


def _reliability_png(result: EvaluationResult, labels: torch.Tensor) -> str:
    after = result.probs.detach().float().cpu()
    before = torch.from_numpy(probabilities(result.logits))
    ece_after = expected_calibration_error(after, labels, BINS)
    ece_before = expected_calibration_error(before, labels, BINS)
    fig, (ax, ax_n) = _figure(4.8, 2, [3, 1])
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    centres = torch.arange(BINS).add(0.5).div(BINS)
    width = 0.4 / BINS  # two bars side by side per bin: before, after
    runs = ((before, "before", "tab:orange", -1), (after, "after", "tab:blue", 1))
    for probs, name, colour, side in runs:
        means, freqs, counts = _bins(probs, labels.float())
        ax.plot(means, freqs, "o-", color=colour, label=f"{name} calibration")
        ax_n.bar((centres + side * width / 2).tolist(), counts, width, color=colour)
    _finish(ax, "rel", f"Reliability: ECE {ece_after:.4f} after, {ece_before:.4f} before")
    ax_n.set(xlabel="mean predicted p(cat) per bin", ylabel="pictures", xlim=(0, 1))
    return _png(fig)


def _thumb(m: Mistake) -> dict[str, Any]:
    src = ""
    # Decoded the way evaluation did; a file may have changed or vanished since, and a broken
    # thumbnail must not cost the whole report.
    with contextlib.suppress(Exception):
        src = data_uri(Image.fromarray(decode_square(m.sample.path, THUMB)), "JPEG")
    why = "evidence for cat" if m.predicted else "evidence for not-cat"
    return {"src": src, "path": str(m.sample.path), "p_cat": m.p_cat,
            "class_name": m.sample.class_name, "heatmap": m.heatmap, "why": why}  # fmt: skip


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "undefined (one class only)"
    if key in ("accuracy", "precision", "recall", "f1", "unsure_rate", "sure_accuracy"):
        return f"{value:.2%}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _card(src: str = "", alt: str = "", note: str = "") -> dict[str, str]:
    """A plot (a data: URI and its alt text) or, where there is none, a note."""
    return {"src": src, "alt": alt, "note": note}


def _curves(result: EvaluationResult, labels: torch.Tensor) -> list[dict[str, str]]:
    """ROC and PR cards, or a note where one class is missing and the curve means nothing."""
    probs, m = result.probs.detach().float().cpu(), result.metrics
    n_cat = int(labels.sum())
    cards = []
    if 0 < n_cat < len(labels):
        roc = _roc_png(probs, labels, m["confusion"], m["roc_auc"])
        cards.append(_card(roc, "ROC curve"))
    else:
        which = "cats" if n_cat else "not-cats"
        cards.append(_card(note=f"ROC curve undefined: only {which} in this data."))
    if n_cat:
        cards.append(_card(_pr_png(probs, labels, m["confusion"]), "PR curve"))
    else:
        cards.append(_card(note="Precision-recall curve undefined: no cats in this data."))
    if len(labels):
        cards.append(_card(_reliability_png(result, labels), "reliability"))
    return cards


def _template() -> jinja2.Template:
    # autoescape=True for every value: a file name like "<script>.jpg" can never open a tag.
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("catnet.evaluating", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails loudly, not as blank text
    )
    return env.get_template("report.html.j2")


def with_heatmaps(checkpoint: str | Path, mistakes: list[Mistake], top_n: int) -> list[Mistake]:
    """The mistakes, those the report shows (the first top_n of each kind) carrying their
    heatmap URI. Imported here, not at the top: the model code is only needed with heatmaps."""
    from catnet.evaluating.report_heatmaps import heatmap_uris

    shown = [
        i
        for kind in (1, 0)
        for i in [j for j, m in enumerate(mistakes) if m.predicted == kind][:top_n]
    ]
    pictures = [(mistakes[i].sample.path, bool(mistakes[i].predicted)) for i in shown]
    uris = heatmap_uris(checkpoint, pictures, THUMB)
    out = list(mistakes)
    for i, uri in zip(shown, uris, strict=True):
        out[i] = dataclasses.replace(out[i], heatmap=uri)
    return out


def render_html(result: EvaluationResult, mistakes: list[Mistake], top_n: int) -> str:
    m = result.metrics
    labels = torch.tensor([s.label for s in result.samples], dtype=torch.long)
    fps = [x for x in mistakes if x.predicted]  # already most confident first
    fns = [x for x in mistakes if not x.predicted]
    galleries = [
        ("False positives: not-cats called cat", fps),
        ("False negatives: cats called not-cat", fns),
    ]
    return (
        _template().render(
            model=str(m.get("model", "?")),
            data=str(m.get("data", "?")),
            split=str(m.get("split", "?")),
            n=m["n"],
            threshold=m["threshold"],
            metrics=[(name, _fmt(key, m[key])) for key, name in METRIC_NAMES.items() if key in m],
            confusion=m["confusion"],
            curves=_curves(result, labels),
            galleries=[
                {"title": title, "total": len(items), "thumbs": [_thumb(x) for x in items[:top_n]]}
                for title, items in galleries
            ],
            skipped=result.skipped,
            shown_skipped=SHOWN_SKIPPED,
        )
        + "\n"
    )


def write_report(
    result: EvaluationResult,
    out_dir: str | Path,
    top_n: int = 12,
    checkpoint: str | Path | None = None,
) -> Path:
    """Write out_dir/index.html and out_dir/mistakes.csv; return the path of the page. With the
    checkpoint, each mistake shown has its heatmap next to its thumbnail."""
    out = Path(out_dir).expanduser()
    with writing("the report", out):
        out.mkdir(parents=True, exist_ok=True)
    mistakes = find_mistakes(result)
    if checkpoint is not None:
        mistakes = with_heatmaps(checkpoint, mistakes, top_n)
    model, threshold = str(result.metrics.get("model", "")), float(result.metrics["threshold"])
    write_mistakes_csv(mistakes, model, threshold, out / "mistakes.csv")
    # errors="replace": a file name that is not valid UTF-8 shows as "?" rather than crashing.
    html = render_html(result, mistakes, top_n)
    return atomic_write_text(out / "index.html", html, errors="replace", what="the report")
