"""The built website as a reader sees it: every page opened in headless Chromium.

`make test` builds the book into `_build/html` before pytest runs, so these tests check what `make book` produced:

- every page loads without a console error (Chromium's SEVERE log entries: failed requests, JavaScript errors);
- the mathematics is typeset: on a page with math, MathJax (served from the book's own `_static`, never a CDN)
  replaced every formula by an `mjx-container` and reported no `mjx-merror`;
- every image has loaded (`naturalWidth > 0`), and nothing was fetched from another host (the book works offline);
- exercise solutions are hidden in a dropdown and, once opened, show their code and its output;
- each notebook page offers its `.ipynb` for download, and the search page finds a word;
- a screenshot of each page is saved to `_build/screenshots/` for a person to look at.

The pages are served from a local `http.server` on 127.0.0.1 (under file:// the search index and MathJax's fonts
would not load). Without Chromium the tests are skipped with the reason; in CI (`CI=true`) a missing browser fails.
Debian: `apt-get install chromium chromium-driver` (what `.ci/run` does).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Chromium flags that work headless in a container as root, with no network beyond loopback.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]
# Pages Sphinx writes that are not chapters: the index redirect and the generated index are checked only for errors.
NOT_CONTENT = {"index.html", "genindex.html", "search.html"}


def _unavailable(reason: str):
    """Fail in CI, where the browser is part of the contract; skip, visibly, on a reader's machine."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def _pages() -> list[str]:
    """Every HTML page of the built site, relative to its root (none if the site is not built)."""
    if not SITE.is_dir():
        return []
    return sorted(
        p.relative_to(SITE).as_posix()
        for p in SITE.rglob("*.html")
        if not p.relative_to(SITE).parts[0].startswith("_")  # _static, _sources, _images
    )


PAGES = _pages()


@pytest.fixture(scope="session")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        _unavailable(f"the website is not built ({SITE} has no index.html): run `make book` first")
    return SITE


@pytest.fixture(scope="session")
def server(site):
    """Serve the site on 127.0.0.1 on a free port; yield its base URL."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def driver(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:  # pragma: no cover - selenium is pinned in requirements.txt
        _unavailable(f"selenium is not installed: {error}")
    browser = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
    chromedriver = shutil.which("chromedriver")
    if browser is None or chromedriver is None:
        _unavailable(
            "headless Chromium is not available (need `chromium` and `chromedriver` on PATH; "
            "Debian: apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Giving both paths explicitly keeps Selenium Manager from trying to download a browser or a driver.
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    chrome.set_page_load_timeout(120)  # generous: CI machines have 2 cores
    chrome.set_script_timeout(120)
    yield chrome
    chrome.quit()


def _wait(driver, script: str, timeout: float = 60.0, what: str = ""):
    """Wait until the JavaScript expression `script` is truthy; return its value. Fail saying `what` timed out."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
            lambda d: d.execute_script(f"return {script};")
        )
    except TimeoutException:
        console = [entry["message"] for entry in driver.get_log("browser")]
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or script} on {driver.current_url}; "
                    f"console: {console}")


def _open(driver, url: str) -> None:
    driver.get_log("browser")  # drop entries left by a previous page
    driver.get(url)
    _wait(driver, "document.readyState === 'complete'")


def _severe_console_entries(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _screenshot(driver, page: str) -> None:
    """Save the whole page (up to 16,000 px tall) as _build/screenshots/<page>.png, for a person to look at."""
    import base64

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = min(driver.execute_script("return document.documentElement.scrollHeight;"), 16000)
    width = driver.execute_script("return document.documentElement.clientWidth;")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
    )
    name = page.replace("/", "__").removesuffix(".html") + ".png"
    (SCREENSHOTS / name).write_bytes(base64.b64decode(shot["data"]))


def test_the_site_has_pages(site):
    assert "book/intro.html" in PAGES, f"the introduction was not built; pages: {PAGES}"
    assert "book/bibliography.html" in PAGES


@pytest.mark.parametrize("page", PAGES or ["(site not built)"])
def test_page_renders(page, site, server, driver):
    _open(driver, server + page)
    if page in NOT_CONTENT:
        assert _severe_console_entries(driver) == []
        return

    # Mathematics: Sphinx marks each formula with the class `math`; MathJax must turn every one into mjx-container.
    n_math = driver.execute_script("return document.querySelectorAll('span.math, div.math').length;")
    if n_math:
        status = _wait(
            driver,
            "window.MathJax && MathJax.startup && MathJax.startup.promise && "
            "(window.__mathjaxStatus || (MathJax.startup.promise.then("
            "() => { window.__mathjaxStatus = 'done'; }, e => { window.__mathjaxStatus = String(e); }), false))",
            what="MathJax to load and typeset the page",
        )
        assert status == "done", f"MathJax failed on {page}: {status}"
        n_typeset = driver.execute_script(
            "return document.querySelectorAll('span.math mjx-container, div.math mjx-container').length;"
        )
        assert n_typeset == n_math, f"{page}: {n_typeset} of {n_math} formulas typeset"
        assert driver.execute_script("return document.querySelectorAll('mjx-merror').length;") == 0, (
            f"{page}: MathJax reports a TeX error"
        )
        src = driver.execute_script("return Array.from(document.scripts).map(s => s.src).find(s => /tex-chtml/.test(s));")
        assert src and src.startswith(server), f"{page}: MathJax is not served with the book: {src}"

    # Images: scroll through the page so lazy images load, then every one must have decoded.
    driver.execute_script("window.scrollTo(0, document.documentElement.scrollHeight);")
    _wait(driver, "Array.from(document.images).every(img => img.complete)", what="images to load")
    broken = driver.execute_script(
        "return Array.from(document.images).filter(img => !(img.naturalWidth > 0)).map(img => img.src);"
    )
    assert broken == [], f"{page}: images that did not load: {broken}"
    driver.execute_script("window.scrollTo(0, 0);")

    # Offline: everything the page fetched came from this server.
    foreign = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(arguments[0]));",
        server,
    )
    assert foreign == [], f"{page} fetched resources from elsewhere: {foreign}"

    # Exercises: each solution is a closed dropdown that opens onto its content, code outputs included.
    n_solutions = driver.execute_script("return document.querySelectorAll('div.solution').length;")
    if n_solutions:
        not_dropdown = driver.execute_script(
            "return Array.from(document.querySelectorAll('div.solution'))"
            ".filter(s => !s.classList.contains('dropdown')).map(s => s.id);"
        )
        assert not_dropdown == [], f"{page}: solutions not in a dropdown: {not_dropdown}"

        def solutions_shown() -> list[bool]:
            return driver.execute_script(
                "return Array.from(document.querySelectorAll('div.solution > section'))"
                ".map(s => getComputedStyle(s).visibility !== 'hidden' && s.getBoundingClientRect().height > 0);"
            )

        assert solutions_shown() == [False] * n_solutions, f"{page}: solutions shown before the reader opens them"
        driver.execute_script("document.querySelectorAll('div.solution button.toggle-button').forEach(b => b.click());")
        _wait(
            driver,
            "Array.from(document.querySelectorAll('div.solution > section'))"
            ".every(s => getComputedStyle(s).visibility !== 'hidden' && s.getBoundingClientRect().height > 0)",
            timeout=30,
            what="solutions to open when their toggle button is clicked",
        )
        silent = driver.execute_script(
            "return Array.from(document.querySelectorAll('div.solution'))"
            ".filter(s => s.querySelector('.cell_input') && !Array.from(s.querySelectorAll('.cell_output'))"
            ".some(o => o.getBoundingClientRect().height > 0)).map(s => s.id);"
        )
        assert silent == [], f"{page}: solutions whose code shows no output (not executed, or prints nothing): {silent}"

    # Notebooks: the download button offers the .ipynb source, and that file is served.
    source = SITE / "_sources" / page.replace(".html", ".ipynb")
    if source.is_file():
        links = driver.execute_script(
            "return Array.from(document.querySelectorAll('a')).map(a => a.href).filter(h => h.endsWith('.ipynb'));"
        )
        assert links, f"{page}: no .ipynb download link"
        with urllib.request.urlopen(links[0], timeout=10) as response:
            assert json.load(response)["nbformat"] == 4

    _screenshot(driver, page)
    assert _severe_console_entries(driver) == []


def test_search_finds_rank(site, server, driver):
    _open(driver, server + "search.html?q=rank")
    n_results = _wait(driver, "document.querySelectorAll('ul.search li').length", what="search results for 'rank'")
    assert n_results > 0
    hits = driver.execute_script("return Array.from(document.querySelectorAll('ul.search li a')).map(a => a.href);")
    if (SITE / "book" / "01_theory.html").is_file():
        assert any("01_theory" in hit for hit in hits), f"the theory chapter is not among the results: {hits}"
    _screenshot(driver, "search.html")
    assert _severe_console_entries(driver) == []
