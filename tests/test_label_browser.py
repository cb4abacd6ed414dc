"""catnet label in a real browser: Debian's Chromium, headless, driven by selenium through
chromium-driver. Starts `catnet label` as a user would, presses keys, checks the files and
corrections.csv, undoes, and saves a screenshot. Skips (saying why) where the browser is missing:
`apt-get install chromium chromium-driver` and `pip install selenium` provide it."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import OpenSetRun, make_dataset, write_class

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
EVIL = "<img src=x onerror=alert(2)><script>alert(1).png"
SHOT_FOR_THE_LEAD = Path("/tmp/label-shot.png")

pytestmark = pytest.mark.slow


def _missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (DRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (apt-get install {package})"
    return ""


@contextlib.contextmanager
def running_label(data: Path, *extra: str) -> Iterator[str]:
    """`catnet label DATA --port 0 EXTRA` running; yields the printed URL."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "catnet", "label", str(data), "--port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:"), (url, proc.stderr.read())  # type: ignore[union-attr]
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(name="server")
def server_fixture(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """`catnet label DATA --port 0` running; yields (DATA, the printed URL)."""
    data = make_dataset(tmp_path / "data", n_per_class=4, size=160)
    write_class(data / "unlabeled", "cats", 2, 160, start=100)
    write_class(data / "unlabeled", "dogs", 2, 160, start=100)
    shutil.copy(data / "cats" / "cats_0.png", data / "unlabeled" / EVIL)
    with running_label(data) as url:
        yield data, url


@pytest.fixture(name="browser")
def browser_fixture(tmp_path: Path) -> Iterator[object]:
    reason = _missing()
    if reason:
        pytest.skip(f"no headless browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,860",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], object], timeout: float = 20.0) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {check}")


def rows(data: Path) -> list[dict[str, str]]:
    log = data / ".catnet" / "corrections.csv"
    if not log.exists():
        return []
    with log.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_keys_move_files_and_undo_puts_them_back(
    server: tuple[Path, str], browser: object, tmp_path: Path
) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    data, url = server
    driver = browser
    driver.get(url)  # type: ignore[attr-defined]
    shown = lambda: driver.find_element(By.ID, "label-name").text  # type: ignore[attr-defined]  # noqa: E731
    body = driver.find_element(By.TAG_NAME, "body")  # type: ignore[attr-defined]
    first = str(wait_for(lambda: shown() if shown() and "no untagged" not in shown() else ""))
    wait_for(
        lambda: driver.execute_script(  # type: ignore[attr-defined]
            "const i = document.getElementById('label-img'); return i.complete && i.naturalWidth > 0"
        )
    )
    driver.save_screenshot(str(tmp_path / "label-page.png"))  # type: ignore[attr-defined]
    driver.save_screenshot(str(SHOT_FOR_THE_LEAD))  # type: ignore[attr-defined]

    body.send_keys("c")
    wait_for(lambda: len(rows(data)) == 1)
    assert not (data / "unlabeled" / first).exists() and (data / "cats" / first).exists()
    assert rows(data)[0]["new_label"] == "cat" and rows(data)[0]["old_label"] == "new"
    second = str(wait_for(lambda: shown() if shown() != first else ""))
    body.send_keys("n")
    wait_for(lambda: len(rows(data)) == 2)
    assert (data / "not_cat" / second).exists()
    assert [r["new_label"] for r in rows(data)] == ["cat", "not_cat"]
    driver.save_screenshot(str(tmp_path / "after-answers.png"))  # type: ignore[attr-defined]

    body.send_keys("u")
    wait_for(lambda: len(rows(data)) == 1)
    assert (data / "unlabeled" / second).exists() and not (data / "not_cat" / second).exists()
    wait_for(lambda: shown() == second)  # the undone picture is back on screen
    body.send_keys("u")
    wait_for(lambda: rows(data) == [])
    assert (data / "unlabeled" / first).exists() and not (data / "cats" / first).exists()

    for _ in range(6):  # skip on to the picture whose name is markup
        if shown() == EVIL:
            break
        body.send_keys("s")
        time.sleep(0.2)
    assert shown() == EVIL  # shown as text, not run
    assert (
        driver.execute_script(  # type: ignore[attr-defined]
            "return document.querySelectorAll('img[onerror], #label-name *').length"
        )
        == 0
    )
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # type: ignore[attr-defined]  # noqa: B018
    assert (tmp_path / "label-page.png").stat().st_size > 10_000

    body.send_keys("4")  # Try: choose a file; with no model yet the page says to Teach first
    driver.find_element(By.ID, "try-file").send_keys(str(data / "cats" / "cats_1.png"))  # type: ignore[attr-defined]
    status = lambda: driver.find_element(By.ID, "try-status").text  # type: ignore[attr-defined]  # noqa: E731
    assert "Teach first" in str(wait_for(lambda: "Teach" in status() and status()))


def test_an_unfamiliar_picture_wears_a_badge(
    openset_run: OpenSetRun, browser: object, tmp_path: Path
) -> None:
    """With a model that has the open-set check, uniform noise is flagged, unfamiliar pictures
    lead the Label queue (they count as unsure), and the page shows the badge on exactly the
    pictures the API flags."""
    import json
    import urllib.parse
    import urllib.request

    from selenium.webdriver.common.by import By

    data = make_dataset(tmp_path / "data", n_per_class=4, size=24)
    write_class(data / "unlabeled", "cats", 2, 24, start=100)
    noise = sorted(p for p in openset_run.strange.iterdir() if p.name.startswith("uniform_"))[0]
    shutil.copy(noise, data / "unlabeled" / noise.name)
    driver = browser
    with running_label(data, "--checkpoint", str(openset_run.best)) as url:
        driver.get(url)  # type: ignore[attr-defined]
        badge = lambda: driver.find_element(By.ID, "label-unfamiliar")  # type: ignore[attr-defined]  # noqa: E731
        shown = lambda: driver.find_element(By.ID, "label-name").text  # type: ignore[attr-defined]  # noqa: E731
        wait_for(lambda: badge().is_displayed(), timeout=60)  # once ranking is done
        parts = urllib.parse.urlsplit(url)
        token = urllib.parse.parse_qs(parts.query)["token"][0]
        ask = urllib.request.Request(f"{parts.scheme}://{parts.netloc}/api/queue?kind=label",
                                     headers={"X-Catnet-Token": token})  # fmt: skip
        with urllib.request.urlopen(ask, timeout=20) as answer:
            items = json.load(answer)["items"]
        flags = {it["name"]: it["unfamiliar"] for it in items}
        assert flags[noise.name] is True and len(flags) == 3
        assert [it["unfamiliar"] for it in items] == sorted(flags.values(), reverse=True)
        seen = {}
        for _ in items:
            name = shown()
            seen[name] = badge().is_displayed()
            if seen[name]:
                assert "never tagged cat" in badge().text
            driver.find_element(By.TAG_NAME, "body").send_keys("s")  # type: ignore[attr-defined]
            wait_for(lambda n=name: shown() != n)
        assert seen == flags
        driver.save_screenshot(str(tmp_path / "unfamiliar.png"))  # type: ignore[attr-defined]
