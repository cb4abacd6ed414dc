"""`catnet evaluate --report DIR`: one offline HTML page to look at, and a mistakes.csv to fix.

The page has to open anywhere (a mail attachment, a machine without network), so it is a
single file: CSS in a <style> tag, plots and thumbnails as base64 data: URIs, and a
Content-Security-Policy that forbids the browser from fetching anything else.
"""

from __future__ import annotations

import base64
import csv
import io
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from catnet.data.folders import Sample
from catnet.data.pixels import decode_square
from catnet.inference.calibration import expected_calibration_error
from catnet.inference.metrics import pr_curve, roc_curve
from catnet.inference.outputs import RowWriter

if TYPE_CHECKING:  # evaluation pulls in the model code; the report only reads its result
    from matplotlib.figure import Figure

    from catnet.inference.evaluation import EvaluationResult

BINS = 15  # expected_calibration_error's default, so the diagram shows what the ECE measures
THUMB = 128
# predict --output's columns first, so the file can go straight to `catnet correct --from`.
# label starts as the folder's tag: an unedited file changes nothing when fed to
# `catnet correct --from`; edit label where the folder is wrong (predicted shows the model's view).
CSV_COLUMNS = (*RowWriter.COLUMNS, "folder_label", "predicted")
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
CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;
color:#222;background:#fafafa}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.2em 0 .5em}
code{font-size:.9em;word-break:break-all}.sub{color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:16px;
align-items:start}
.summary{display:flex;flex-wrap:wrap;gap:16px 64px;align-items:flex-start}h3{margin:0 0 .5em}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px}
.card img{max-width:100%;height:auto;display:block;margin:auto}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}
.ok{background:#e3f4e1}.bad{background:#fbe3e1}.note{color:#8a5a00;font-style:italic}
.thumbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
figure img{width:128px;height:128px;display:block;margin:auto}
figcaption{font-size:12px;margin-top:4px}.missing{width:128px;height:128px;margin:auto;
display:flex;align-items:center;justify-content:center;background:#eee;color:#a00}
"""


@dataclass(frozen=True)
class Mistake:
    sample: Sample
    p_cat: float
    predicted: int  # 1 = cat
    confidence: float  # p(predicted label): how sure the model was of its wrong answer
    unfamiliar: bool | None = None  # flagged by the open-set check (so never called cat)
    score: float | None = None  # its open-set score


def find_mistakes(result: EvaluationResult) -> list[Mistake]:
    """Every misclassified picture, most confident first (ties by path, for stable output)."""
    probs = result.probs.detach().float().cpu()
    n = len(probs)
    flags = [None] * n if result.unfamiliar is None else result.unfamiliar.tolist()
    scores = [None] * n if result.scores is None else result.scores.tolist()
    # Same comparison as metrics.confusion, so the list always matches the confusion matrix;
    # an unfamiliar picture is never called cat (as in evaluate's metrics).
    predicted = (probs >= float(result.metrics["threshold"])).long().tolist()
    out = []
    for sample, p, pred, flag, score in zip(
        result.samples, probs.tolist(), predicted, flags, scores, strict=True
    ):
        pred = 0 if flag else pred
        if pred != sample.label:
            out.append(Mistake(sample, p, pred, p if pred else 1.0 - p, flag, score))
    return sorted(out, key=lambda m: (-m.confidence, str(m.sample.path)))


def write_mistakes_csv(mistakes: list[Mistake], model: str, threshold: float, path: Path) -> Path:
    # surrogateescape like predict's RowWriter: odd file names survive the round trip.
    with path.open("w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for m in mistakes:
            tag = LABELS[m.sample.label]
            flag = "" if m.unfamiliar is None else str(m.unfamiliar).lower()
            score = "" if m.score is None else round(m.score, 6)
            row = (m.sample.path, tag, round(m.p_cat, 6), "", model, threshold, flag, score)
            writer.writerow((*row, tag, LABELS[m.predicted]))
    return path


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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
    before = torch.sigmoid(result.logits.detach().float().cpu())
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


def _thumb(m: Mistake) -> str:
    path = escape(str(m.sample.path))
    try:  # decode the way evaluation did; a file may have changed or vanished since
        pixels = decode_square(m.sample.path, THUMB)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=85)
        src = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        picture = f'<img src="{src}" alt="{path}">'
    except Exception:  # a broken thumbnail must not cost the whole report
        picture = '<div class="missing">unreadable</div>'
    caption = f"<b>p(cat) {m.p_cat:.3f}</b> · {escape(m.sample.class_name)}/"
    return f"<figure>{picture}<figcaption>{caption}<br><code>{path}</code></figcaption></figure>"


def _gallery(title: str, mistakes: list[Mistake], total: int) -> str:
    shown = f" (top {len(mistakes)} of {total})" if total > len(mistakes) else ""
    body = "".join(_thumb(m) for m in mistakes) if mistakes else "<p>none</p>"
    return f'<h2>{escape(title)}{shown}</h2><div class="thumbs">{body}</div>'


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "undefined (one class only)"
    if key in ("accuracy", "precision", "recall", "f1", "unsure_rate", "sure_accuracy"):
        return f"{value:.2%}"
    return f"{value:.4f}" if isinstance(value, float) else escape(str(value))


def _metrics_table(m: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{name}</td><td>{_fmt(key, m[key])}</td></tr>"
        for key, name in METRIC_NAMES.items()
        if key in m
    )
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def _confusion_table(c: dict[str, int]) -> str:
    return (
        "<table><tr><th>truth \\ predicted</th><th>cat</th><th>not_cat</th></tr>"
        f'<tr><td>cat</td><td class="ok">{c["tp"]}</td><td class="bad">{c["fn"]}</td></tr>'
        f'<tr><td>not_cat</td><td class="bad">{c["fp"]}</td><td class="ok">{c["tn"]}</td></tr>'
        "</table>"
    )


def _curves(result: EvaluationResult, labels: torch.Tensor) -> list[str]:
    """ROC and PR cards, or a note where one class is missing and the curve means nothing."""
    probs, m = result.probs.detach().float().cpu(), result.metrics
    n_cat = int(labels.sum())
    cards = []
    if 0 < n_cat < len(labels):
        roc = _roc_png(probs, labels, m["confusion"], m["roc_auc"])
        cards.append(f'<img src="{roc}" alt="ROC curve">')
    else:
        which = "cats" if n_cat else "not-cats"
        cards.append(f'<p class="note">ROC curve undefined: only {which} in this data.</p>')
    if n_cat:
        cards.append(f'<img src="{_pr_png(probs, labels, m["confusion"])}" alt="PR curve">')
    else:
        cards.append('<p class="note">Precision-recall curve undefined: no cats in this data.</p>')
    if len(labels):
        cards.append(f'<img src="{_reliability_png(result, labels)}" alt="reliability">')
    return cards


def _skipped(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li><code>{escape(p)}</code>: {escape(r)}</li>" for p, r in skipped[:500])
    more = f"<li>… and {len(skipped) - 500} more</li>" if len(skipped) > 500 else ""
    summary = f"<summary>{len(skipped)} unreadable files skipped</summary>"
    return f"<h2>Skipped</h2><details>{summary}<ul>{items}{more}</ul></details>"


def render_html(result: EvaluationResult, mistakes: list[Mistake], top_n: int) -> str:
    m = result.metrics
    labels = torch.tensor([s.label for s in result.samples], dtype=torch.long)
    fps = [x for x in mistakes if x.predicted]  # already most confident first
    fns = [x for x in mistakes if not x.predicted]
    model, data = escape(str(m.get("model", "?"))), escape(str(m.get("data", "?")))
    confusion = "<div><h3>Confusion matrix</h3>" + _confusion_table(m["confusion"]) + "</div>"
    grid = "".join(f'<div class="card">{c}</div>' for c in _curves(result, labels))
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>catnet report: {model} on {data}</title><style>{CSS}</style></head><body>"
        f"<h1>catnet evaluation: model <code>{model}</code></h1>"
        f'<p class="sub">data <code>{data}</code> · split {escape(str(m.get("split", "?")))}'
        f" · {m['n']} pictures · threshold {m['threshold']:.3f}</p>"
        f'<div class="card summary">{_metrics_table(m)}{confusion}</div>'
        f'<h2>Curves</h2><div class="grid">{grid}</div>'
        + _gallery("False positives: not-cats called cat", fps[:top_n], len(fps))
        + _gallery("False negatives: cats called not-cat", fns[:top_n], len(fns))
        + _skipped(result.skipped)
        + "</body></html>\n"
    )


def write_report(result: EvaluationResult, out_dir: str | Path, top_n: int = 12) -> Path:
    """Write out_dir/index.html and out_dir/mistakes.csv; return the path of the page."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    mistakes = find_mistakes(result)
    model, threshold = str(result.metrics.get("model", "")), float(result.metrics["threshold"])
    write_mistakes_csv(mistakes, model, threshold, out / "mistakes.csv")
    page = out / "index.html"
    # errors="replace": a file name that is not valid UTF-8 shows as "?" rather than crashing.
    page.write_text(render_html(result, mistakes, top_n), encoding="utf-8", errors="replace")
    return page
