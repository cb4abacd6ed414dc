"""The evaluation report: one offline HTML page plus mistakes.csv, from a hand-made result."""

from __future__ import annotations

import csv
import html
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from catnet.data.folders import Sample
from catnet.evaluating.evaluation import EvaluationResult
from catnet.evaluating.report import CSV_COLUMNS, find_mistakes, write_report
from catnet.scoring.decision import Decision
from catnet.scoring.metrics import binary_metrics

pytestmark = pytest.mark.slow  # every test draws the report's plots; one starts a browser

TEMPERATURE = 2.0
# (class folder, file name, p(cat)): three false positives, two false negatives, four right.
PICTURES = [
    ("cats", "tabby.png", 0.95),
    ("cats", "ginger.png", 0.80),
    ("cats", "hidden cat.png", 0.35),
    ("cats", "blurry.png", 0.05),
    ("dogs", "a&b<c>.png", 0.97),
    ("dogs", "collie.png", 0.10),
    ("cars", "red car.png", 0.60),
    ("cars", "van.png", 0.20),
    ("foxes", "fox.png", 0.70),
]


def make_result(
    root: Path, pictures: list[tuple[str, str, float]], threshold: float = 0.5
) -> EvaluationResult:
    """An EvaluationResult as evaluate() would build it, without a model."""
    samples = []
    for i, (folder, name, _) in enumerate(pictures):
        path = root / "data" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (30 * i % 256, 90, 200 - 20 * i)).save(path, "PNG")
        samples.append(Sample(path, int(folder == "cats"), folder))
    probs = torch.tensor([p for _, _, p in pictures])
    logits = torch.logit(probs) * TEMPERATURE  # so that sigmoid(logits / T) == probs
    labels = torch.tensor([s.label for s in samples])
    cat = torch.from_numpy(
        Decision(threshold, TEMPERATURE).decide(logits.numpy()).cat
    )  # as evaluate's
    metrics = binary_metrics(probs, labels, threshold, cat)
    metrics.update(
        pr_auc=0.5, ece=0.1, ece_uncalibrated=0.2, temperature=TEMPERATURE, split="all",
        data=str(root / "data"), model="abc123", skipped=0,
    )  # fmt: skip
    return EvaluationResult(metrics, samples, probs, logits, [], cat=cat)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The main example, written once: drawing the plots is most of each test's time."""
    root = tmp_path_factory.mktemp("report")
    result = make_result(root, PICTURES)
    result.skipped = [("/x/<bad>.jpg", "not a picture (unknown format)")]
    page = write_report(result, root / "report")
    assert page == root / "report" / "index.html"
    return root


def test_page_is_one_offline_file(report: Path) -> None:
    text = (report / "report" / "index.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert "Content-Security-Policy" in text  # the browser itself refuses anything else
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[^"'\s>]""", text)
    assert text.count("data:image/png;base64,") == 3  # ROC, PR, reliability
    assert text.count("data:image/jpeg;base64,") == 5  # the five mistakes
    assert "abc123" in text and html.escape(str(report / "data")) in text
    assert "ROC curve" in text


def test_paths_are_html_escaped(report: Path) -> None:
    text = (report / "report" / "index.html").read_text(encoding="utf-8")
    odd = str(report / "data" / "dogs" / "a&b<c>.png")
    assert html.escape(odd) in text
    assert "a&b<c>" not in text  # never raw: it would open a tag
    assert html.escape(str(report / "data" / "cats" / "hidden cat.png")) in text


def test_a_script_or_quote_in_a_file_name_stays_text(tmp_path: Path) -> None:
    # The path, with its folder separators, reads <script>alert(1)</script>" onerror="x.png.
    pictures = [("cats", "a.png", 0.9), ("cats", '<script>alert(1)</script>" onerror="x.png', 0.1)]
    result = make_result(tmp_path, pictures)
    result.skipped = [("<script>alert(2)</script>.jpg", "<b>not</b> a picture")]
    text = write_report(result, tmp_path / "report").read_text(encoding="utf-8")
    assert "<script" not in text and 'onerror="' not in text and "<b>not</b>" not in text
    assert (
        text.count("&lt;script&gt;alert(1)&lt;/script&gt;&#34; onerror=&#34;x.png") == 2
    )  # alt, caption
    assert "&lt;script&gt;alert(2)&lt;/script&gt;.jpg" in text


def test_mistakes_csv_most_confident_first(report: Path) -> None:
    rows = read_csv(report / "report" / "mistakes.csv")
    names = [Path(r["path"]).name for r in rows]
    # confidence in the wrong answer: 0.97, 0.95 (1 - 0.05), 0.70, 0.65 (1 - 0.35), 0.60
    assert names == ["a&b<c>.png", "blurry.png", "fox.png", "hidden cat.png", "red car.png"]
    by_name = {Path(r["path"]).name: r for r in rows}
    # label is the model's answer, as in predict's rows; truth the folder's tag
    assert by_name["a&b<c>.png"]["label"] == "cat"
    assert by_name["a&b<c>.png"]["truth"] == "not_cat"
    assert by_name["blurry.png"]["label"] == "not_cat"
    assert by_name["blurry.png"]["truth"] == "cat"
    assert math.isclose(float(by_name["blurry.png"]["p_cat"]), 0.05, abs_tol=1e-6)
    assert all(r["error"] == "" and r["model"] == "abc123" for r in rows)
    assert rows[0]["path"] == str(report / "data" / "dogs" / "a&b<c>.png")


def test_mistakes_csv_carries_the_open_set_flag_and_score(tmp_path: Path) -> None:
    """The flag and the score land in their own columns, as in predict's rows (they were
    passed by position into the heatmap field: the flag was written as the score)."""
    result = make_result(tmp_path, PICTURES)
    n = len(result.samples)
    result.scores = torch.linspace(0.1, 0.9, n)
    result.unfamiliar = result.scores > 0.5
    write_report(result, tmp_path / "report", top_n=0)
    rows = read_csv(tmp_path / "report" / "mistakes.csv")
    assert rows and all(r["unfamiliar"] in ("true", "false") for r in rows)
    by_path = {Path(r["path"]): r for r in rows}
    for sample, score, flag in zip(result.samples, result.scores.tolist(),
                                   result.unfamiliar.tolist(), strict=True):  # fmt: skip
        if sample.path in by_path:
            assert float(by_path[sample.path]["unfamiliar_score"]) == pytest.approx(score, abs=1e-5)
            assert by_path[sample.path]["unfamiliar"] == str(flag).lower()
    assert all(m.heatmap == "" for m in find_mistakes(result))


def test_csv_starts_with_predict_output_columns() -> None:
    from catnet.predicting.outputs import RowWriter

    assert CSV_COLUMNS[: len(RowWriter.COLUMNS)] == RowWriter.COLUMNS


def test_csv_feeds_catnet_correct(tmp_path: Path) -> None:
    """Edit `truth` where the folder is wrong, feed the file back: only those rows move."""
    from catnet.curation.corrections import correct_from_file

    write_report(make_result(tmp_path, PICTURES), tmp_path / "report")
    assert correct_from_file(tmp_path / "data", tmp_path / "report" / "mistakes.csv") == []
    rows = read_csv(tmp_path / "report" / "mistakes.csv")
    for row in rows:  # the user agrees with the folders except for the blurry "cat"
        if Path(row["path"]).name == "blurry.png":
            row["truth"] = "not_cat"
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    correct_from_file(tmp_path / "data", edited)
    assert not (tmp_path / "data" / "cats" / "blurry.png").exists()
    assert (tmp_path / "data" / "not_cat" / "blurry.png").exists()
    assert (tmp_path / "data" / "dogs" / "a&b<c>.png").exists()  # stays a not-cat
    assert (tmp_path / "data" / "cats" / "hidden cat.png").exists()


def test_threshold_decides_mistakes(tmp_path: Path) -> None:
    result = make_result(tmp_path, PICTURES, threshold=0.75)
    mistakes = find_mistakes(result)  # what the csv and the galleries are made from
    c = result.metrics["confusion"]
    assert len(mistakes) == c["fp"] + c["fn"] == 3  # fox at 0.70 is now right; ginger too
    names = [m.sample.path.name for m in mistakes]
    assert names == ["a&b<c>.png", "blurry.png", "hidden cat.png"]


def test_top_n_limits_thumbnails(tmp_path: Path) -> None:
    result = make_result(tmp_path, PICTURES)
    text = write_report(result, tmp_path / "report", top_n=1).read_text(encoding="utf-8")
    assert text.count("<figure>") == 2  # one false positive, one false negative
    assert "top 1 of 3" in text and "top 1 of 2" in text
    assert len(read_csv(tmp_path / "report" / "mistakes.csv")) == 5  # the csv keeps them all


def test_no_mistakes(tmp_path: Path) -> None:
    right = [("cats", "a.png", 0.9), ("cats", "b.png", 0.7), ("dogs", "c.png", 0.1)]
    text = write_report(make_result(tmp_path, right), tmp_path / "r").read_text(encoding="utf-8")
    assert text.count("<p>none</p>") == 2
    assert "data:image/jpeg" not in text
    assert read_csv(tmp_path / "r" / "mistakes.csv") == []


@pytest.mark.parametrize("folder", ["cats", "dogs"])
def test_one_class(tmp_path: Path, folder: str) -> None:
    pictures = [(folder, "a.png", 0.9), (folder, "b.png", 0.2), (folder, "c.png", 0.6)]
    result = make_result(tmp_path, pictures)
    assert math.isnan(result.metrics["roc_auc"])
    text = write_report(result, tmp_path / "r").read_text(encoding="utf-8")
    assert "ROC curve undefined" in text
    assert "undefined (one class only)" in text  # roc_auc in the table, not "nan"
    assert ("Precision-recall curve undefined" in text) == (folder == "dogs")
    assert len(read_csv(tmp_path / "r" / "mistakes.csv")) == (1 if folder == "cats" else 2)


def test_unreadable_thumbnail(tmp_path: Path) -> None:
    result = make_result(tmp_path, PICTURES)
    gone = tmp_path / "data" / "foxes" / "fox.png"  # deleted since evaluation
    broken = tmp_path / "data" / "cars" / "red car.png"
    broken.write_bytes(b"not a picture")
    gone.unlink()
    text = write_report(result, tmp_path / "report").read_text(encoding="utf-8")
    assert text.count('class="missing">unreadable<') == 2
    assert html.escape(str(broken)) in text and html.escape(str(gone)) in text
    assert text.count("data:image/jpeg;base64,") == 3


def test_skipped_files_listed(report: Path) -> None:
    text = (report / "report" / "index.html").read_text(encoding="utf-8")
    assert "1 unreadable files skipped" in text and "/x/&lt;bad&gt;.jpg" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary to render the page with")
def test_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    page = report / "report" / "index.html"
    shot = tmp_path / "shot.png"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1200,2400", page.as_uri(),
    ]  # fmt: skip
    subprocess.run(command, timeout=60, capture_output=True, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    with Image.open(shot) as img:
        colours = img.convert("RGB").resize((300, 600)).getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # plots and thumbnails, not a blank page
