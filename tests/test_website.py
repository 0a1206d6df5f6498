"""The built website as a reader sees it: every page opened in headless Chromium.

`make test` builds the book into `_build/html` before pytest runs, so these tests check what `make book` produced:

- every page loads without a console error (Chromium's SEVERE log entries: failed requests, JavaScript errors);
- the mathematics is typeset: on a page with math, MathJax (served from the book's own `_static`, never a CDN)
  replaced every formula by an `mjx-container` and reported no `mjx-merror`;
- every image has loaded (`naturalWidth > 0`), and nothing was fetched from another host (the book works offline);
- exercise solutions are hidden in a dropdown and, once opened, show their code and its output;
- each notebook page offers its `.ipynb` for download, and the search page finds a word;
- the page reads at desktop width (1366 px): no code block scrolls sideways, the top header is not an empty band;
- and at phone width (390 px): the page is no wider than the screen, and the sidebar and the on-page contents open
  as drawers when their buttons are clicked;
- every figure has a caption and alt text that describes it (not a file name);
- the text shows readers no test markers (NBVAL), no "Exercise Exercise", no absolute paths of the author's
  machine, no progress-bar remnants, and no chapter named in italics instead of linked;
- the downloadable `.ipynb` reads in plain Jupyter: no MyST roles or directives left (sphinxext/minilora_site.py);
- a screenshot of each page at both widths is saved to `_build/screenshots/` for a person to look at.

The pages are served from a local `http.server` on 127.0.0.1 (under file:// the search index and MathJax's fonts
would not load). Without Chromium the tests are skipped with the reason; in CI (`CI=true`) a missing browser fails.
Debian: `apt-get install chromium chromium-driver` (what `.ci/run` does). `MINILORA_SITE=path` tests another build.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("MINILORA_SITE", ROOT / "_build" / "html")).resolve()
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
    "--window-size=1366,900",
]
DESKTOP, PHONE = 1366, 390  # CSS pixels: a laptop, and a phone held upright (iPhone 12 to 15)
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


def _screenshot(driver, page: str, suffix: str = "") -> None:
    """Save the whole page (up to 16,000 px tall) as _build/screenshots/<page><suffix>.png, for a person to see."""
    import base64

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = min(driver.execute_script("return document.documentElement.scrollHeight;"), 16000)
    width = driver.execute_script("return document.documentElement.clientWidth;")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
    )
    name = page.replace("/", "__").removesuffix(".html") + suffix + ".png"
    (SCREENSHOTS / name).write_bytes(base64.b64decode(shot["data"]))


def _set_width(driver, width: int) -> None:
    """Lay the open page out at `width` CSS pixels (no reload): what a screen of that width shows."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900 if width > 600 else 844, "deviceScaleFactor": 1, "mobile": False},
    )
    _wait(driver, f"window.innerWidth === {width}", timeout=10, what=f"the window to be {width} px wide")


# JavaScript that lists the code blocks of the article whose lines run off their box (scrollWidth > clientWidth):
# notebook inputs, their printed outputs, and literal blocks ({literalinclude}, fenced code in the prose).
SIDEWAYS_CODE = """
return Array.from(document.querySelectorAll('.bd-article pre')).filter(pre => pre.getClientRects().length
    && pre.scrollWidth > pre.clientWidth + 1).map(pre => {
  const kind = pre.closest('.cell_input') ? 'code-cell input' : pre.closest('.cell_output') ? 'printed output'
    : 'literal block';
  const line = pre.innerText.split('\\n').reduce((a, b) => b.length > a.length ? b : a, '');
  return `${kind}, ${pre.scrollWidth - pre.clientWidth} px hidden: ${line.trim().slice(0, 90)}`;
});"""

# Every image in the article with what a reader (or a screen reader) gets: its alt text and its figure's caption.
FIGURES = """
return Array.from(document.querySelectorAll('.bd-article img')).map(img => {
  const figure = img.closest('figure');
  const caption = figure && figure.querySelector('figcaption');
  return {src: img.getAttribute('src'), alt: (img.getAttribute('alt') || '').trim(),
          caption: caption ? caption.innerText.trim() : ''};
});"""

# Alt text that is only a file name or a hash (what myst-nb writes when a cell has no alt in its metadata).
FILE_NAME_ALT = re.compile(r"(^|/)[0-9a-f]{16,}|\.(png|svg|jpe?g|gif)$|^_images/|jupyter_execute", re.I)

# What a reader must never see in a page's text, with the reason.
MARKERS = [
    (re.compile(r"NBVAL"), "an nbval marker (use the cell tag nbval-ignore-output, not a comment)"),
    (re.compile(r"\bExercise\s+Exercise\b"), "'Exercise Exercise' (write {ref}`ex-label`, not Exercise {ref}...)"),
    (re.compile(r"\bthe\s+Exercise\s+[\d.]+\s+exercise\b", re.I), "'the Exercise N exercise' (reference wording)"),
    (re.compile(r"(?<![\w.:/-])/(work|root|tmp|home/\w+)/"), "an absolute path of the author's machine"),
    (re.compile(r"\d+%\|[^|\n]{0,80}\|\s*\d+/\d+"), "a progress-bar remnant (tqdm) in a committed output"),
    (re.compile(r"\{(cite|doc|ref|term|glue:text|numref)\}`"), "MyST markup left unrendered"),
]

# The chapter titles of the sidebar (numbers stripped), and the italic text of the article that names one of them,
# or the start of one ("*Merged versus unmerged*" for "Merged versus unmerged inference"): another chapter is linked
# with {doc}, not set in italics.
ITALIC_CHAPTERS = """
const titles = Array.from(document.querySelectorAll('.bd-sidebar-primary nav.bd-links a.reference'))
  .map(a => a.innerText.replace(/^\\s*[\\d.]+\\s*/, '').trim().toLowerCase()).filter(t => t.length > 3);
return Array.from(document.querySelectorAll('.bd-article em')).map(e => e.innerText.trim())
  .filter(t => titles.some(title => title === t.toLowerCase()
    || (t.split(/\\s+/).length >= 3 && title.startsWith(t.toLowerCase()))));"""


def _drawer_opens(driver, toggle: str, dialog: str) -> str | None:
    """Click the visible `toggle` button; return None if the `dialog` drawer opened onto links, else what happened."""
    found = driver.execute_script(
        "const b = Array.from(document.querySelectorAll(arguments[0])).find(b => b.getClientRects().length"
        " && getComputedStyle(b).visibility !== 'hidden'); if (b) b.click(); return !!b;",
        toggle,
    )
    if not found:
        return f"no visible {toggle} button"
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    opened = (
        "const d = document.querySelector(arguments[0]); if (!d || !d.open) return false;"
        "const r = d.getBoundingClientRect();"
        "return r.width > 100 && r.right > 50 && r.left < window.innerWidth - 50"
        " && Array.from(d.querySelectorAll('a')).some(a => a.getClientRects().length);"
    )
    try:
        WebDriverWait(driver, 10, poll_frequency=0.1).until(lambda d: d.execute_script(opened, dialog))
    except TimeoutException:
        return f"clicking {toggle} did not open {dialog} onto visible links"
    finally:
        driver.execute_script("const d = document.querySelector(arguments[0]); if (d && d.open) d.close();", dialog)
    return None


def _layout_problems(driver, page: str) -> list[str]:
    """At desktop width: code that scrolls sideways, an empty header band, figures without caption or alt text,
    markers and paths shown to readers, chapters named in italics."""
    problems = []
    # The theme draws a top header for its persistent navbar items (an empty band with a second search box) and
    # binds the sidebar buttons inside it, where no one can click them.
    header = driver.execute_script(
        "const h = document.querySelector('#pst-header'); return h ? h.getBoundingClientRect().height : 0;"
    )
    if header >= 1:
        problems.append(f"an empty {header:.0f}-px header band is drawn above the page")
    problems += [f"at {DESKTOP} px, code that scrolls sideways: {s}" for s in driver.execute_script(SIDEWAYS_CODE)]

    for figure in driver.execute_script(FIGURES):
        if not figure["caption"]:
            problems.append(f"a figure without a caption (cell metadata mystnb.figure.caption): {figure['src']}")
        if not figure["alt"] or FILE_NAME_ALT.search(figure["alt"]):
            problems.append(f"a figure without real alt text (cell metadata mystnb.image.alt): {figure['src']} "
                            f"(alt: {figure['alt']!r})")

    # The text a reader sees (dropdowns are open by now, so solutions are included).
    text = driver.execute_script("return document.querySelector('.bd-article').innerText;")
    for pattern, why in MARKERS:
        problems += [f"shows readers {why}: ...{text[max(m.start() - 40, 0):m.end() + 40]!r}..."
                     for m in pattern.finditer(text)]
    problems += [f"names a chapter in italics instead of linking it with {{doc}}: {title!r}"
                 for title in driver.execute_script(ITALIC_CHAPTERS)]
    return problems


def _phone_problems(driver, page: str) -> list[str]:
    """At phone width: the page fits the screen (tables scroll in their own box, headings wrap), and the chapter
    list and the on-page contents open as drawers from their buttons."""
    problems = []
    width = driver.execute_script("return document.scrollingElement.scrollWidth;")
    if width > PHONE:
        wide = driver.execute_script(
            "return Array.from(document.querySelectorAll('.bd-article *')).filter(e => e.getClientRects().length"
            " && e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('pre, table, mjx-container'))"
            ".slice(0, 3).map(e => e.tagName.toLowerCase() + ': ' + (e.innerText || '').trim().slice(0, 60));"
        )
        problems.append(f"at {PHONE} px the page is {width} px wide; what runs off: {wide}")
    problem = _drawer_opens(driver, "button.primary-toggle", "#pst-primary-sidebar-modal")
    if problem:
        problems.append(f"at {PHONE} px, the chapter list: {problem}")
    if driver.execute_script("return document.querySelectorAll('#pst-secondary-sidebar a').length;"):
        problem = _drawer_opens(driver, "button.secondary-toggle", "#pst-secondary-sidebar-modal")
        if problem:
            problems.append(f"at {PHONE} px, the on-page contents: {problem}")
    return problems


def test_the_site_has_pages(site):
    assert "book/intro.html" in PAGES, f"the introduction was not built; pages: {PAGES}"
    assert "book/bibliography.html" in PAGES


@pytest.mark.parametrize("page", PAGES or ["(site not built)"])
def test_page_renders(page, site, server, driver):
    _open(driver, server + page)
    _set_width(driver, DESKTOP)
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

    # What a reader would see go wrong, collected so that one run reports every kind of problem on the page.
    problems = _layout_problems(driver, page)
    _screenshot(driver, page)
    _set_width(driver, PHONE)
    try:
        problems += _phone_problems(driver, page)
        _screenshot(driver, page, f"@{PHONE}")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert problems == [], f"{page}:\n" + "\n".join(problems)
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


def test_sidebar_collapses_at_desktop_width(site, server, driver):
    """At 1366 px the chapter list is shown beside the page, and its button hides it (and shows it again)."""
    _open(driver, server + "book/intro.html")
    _set_width(driver, DESKTOP)
    shown = (
        "(() => { const s = document.querySelector('#pst-primary-sidebar'); const r = s.getBoundingClientRect();"
        " return getComputedStyle(s).visibility !== 'hidden' && r.width > 100 && r.right > 100; })()"
    )
    try:
        assert driver.execute_script(f"return {shown};"), "the sidebar is not shown at desktop width"
        toggle = (
            "Array.from(document.querySelectorAll('button.primary-toggle'))"
            ".find(b => b.getClientRects().length).click()"
        )
        driver.execute_script(toggle)
        _wait(driver, f"!{shown}", timeout=10, what="the sidebar to collapse when its button is clicked")
        driver.execute_script(toggle)
        _wait(driver, shown, timeout=10, what="the sidebar to come back when its button is clicked again")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_index_lists_the_glossary(site):
    """genindex.html is linked from every page; the glossary's terms fill it, so it is not an empty page."""
    index = (site / "genindex.html").read_text(encoding="utf-8")
    for term in ("rank", "scaling", "merge", "adapter"):
        assert re.search(rf">\s*{term}\s*<", index), f"genindex.html does not list the glossary term {term!r}"


def test_chapters_are_numbered(site):
    """Chapters carry numbers in the sidebar, so "Chapter 2" and "Exercise 2.1" point somewhere; the Reference
    pages do not."""
    intro = (site / "book" / "intro.html").read_text(encoding="utf-8")
    numbered = re.findall(r'<a class="reference internal" href="([^"#]+)">\s*(\d+)\.\s', intro)
    chapters = sorted(p.name for p in (site / "book").glob("[0-9][0-9]_*.html"))
    assert sorted(Path(href).name for href, _ in numbered) == chapters, f"numbered in the sidebar: {numbered}"
    assert [int(n) for _, n in numbered] == list(range(1, len(numbered) + 1))


NOTEBOOK_SOURCES = sorted(p.relative_to(SITE).as_posix() for p in (SITE / "_sources").rglob("*.ipynb")) if (
    SITE / "_sources").is_dir() else []
MYST_ROLE = re.compile(r"\{[a-zA-Z][\w:-]*\}`")
MYST_DIRECTIVE = re.compile(r"^(`{3,}|:{3,})\{[\w:-]+\}", re.M)


@pytest.mark.parametrize("notebook", NOTEBOOK_SOURCES or ["(site not built)"])
def test_downloaded_notebook_reads_in_plain_jupyter(notebook, site):
    """The download button's .ipynb has no MyST markup left in its markdown: plain Jupyter shows it as raw text.
    Citations read "Author (Year)", glued numbers are filled in, exercises and solutions are marked in bold."""
    path = site / notebook
    if not path.is_file():
        pytest.skip("the website is not built")
    import nbformat

    nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))  # still a valid notebook
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    markdown = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                for c in cells if c["cell_type"] == "markdown"]
    left = [m.group(0) for text in markdown for m in [*MYST_ROLE.finditer(text), *MYST_DIRECTIVE.finditer(text)]]
    assert left == [], f"{notebook}: MyST markup a plain Jupyter shows as raw text: {sorted(set(left))}"

    # Compare with the committed notebook: each exercise and solution becomes a bold heading with its number.
    original = ROOT / Path(notebook).relative_to("_sources")
    if original.is_file():
        source = "\n".join("".join(c["source"]) for c in json.loads(original.read_text())["cells"]
                           if c["cell_type"] == "markdown")
        text = "\n".join(markdown)
        n_exercises = len(re.findall(r"^`{3,}\{exercise\}", source, re.M))
        assert len(re.findall(r"^\*\*Exercise \d+(\.\d+)* ", text, re.M)) == n_exercises, notebook
        n_solutions = len(re.findall(r"^`{3,}\{solution-start\}", source, re.M))
        assert len(re.findall(r"^\*\*Solution \(Exercise \d+(\.\d+)*\)\.\*\*", text, re.M)) == n_solutions, notebook
        if "{cite" in source:
            assert re.search(r"\w+ (et al\. )?\(\d{4}\)|\(\w+.*?, \d{4}\)", text), f"{notebook}: no citation as text"


def test_dark_mode_logo_and_printing(site, server, driver):
    """In dark mode the logo is the variant with light lettering; printed, long code lines wrap onto the paper."""
    _open(driver, server + "book/intro.html")
    logo = (
        "Array.from(document.querySelectorAll('.navbar-brand img')).filter(i => i.getClientRects().length"
        " && getComputedStyle(i).display !== 'none').map(i => i.getAttribute('src').split('/').pop())"
    )
    assert driver.execute_script(f"return {logo};") == ["logo.png"], "the light logo is not the one shown"
    driver.execute_script("document.documentElement.dataset.theme = 'dark';")
    assert driver.execute_script(f"return {logo};") == ["logo-dark.png"], "dark mode does not show logo-dark.png"
    driver.execute_script("document.documentElement.dataset.theme = 'light';")

    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        white_space = driver.execute_script(
            "return Array.from(document.querySelectorAll('.bd-article pre')).map(p => getComputedStyle(p).whiteSpace);"
        )
        assert white_space and set(white_space) == {"pre-wrap"}, f"printed code does not wrap: {white_space}"
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
