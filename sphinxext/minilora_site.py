"""Plain-Jupyter copies of the book's notebooks, for the website's download button.

The chapters are written in MyST for the website: ``{cite}`hu2021lora` ``, ``{glue:text}`speedup` ``,
```` ```{exercise} ```` blocks, ``{literalinclude}`` of the library's source, ``{doc}`` and ``{ref}`` links. A reader
who downloads a chapter's ``.ipynb`` and opens it in JupyterLab sees that markup as raw text. When the HTML build
finishes, this extension rewrites the downloadable copies (``_build/html/_sources/**/*.ipynb``, where the theme's
download button points) so that their markdown reads in plain Jupyter:

- citations become "Hu et al. (2021)" (``{cite:p}``: "(Hu et al., 2021)"), from ``book/references.bib``;
- ``{glue:text}`` roles become the values the notebook glued (its committed outputs), as on the page;
- exercises become "**Exercise 2.1 (title)**" with the page's number, solutions start with "**Solution (Exercise
  2.1).**" and end with a rule;
- ``{literalinclude}`` becomes a line naming the file and object, followed by that source as a code block;
- ``{doc}`` becomes a markdown link to the other notebook, titled with its number; ``{ref}``, ``{numref}`` and
  ``{term}`` become their text ("Exercise 2.1", "Fig. 3.2", the term).

Only the copies under ``_build`` change: the committed notebooks stay as they are. Code cells and outputs are
untouched. ``tests/test_website.py`` checks the result.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import docname_join, logging
from sphinx.util.nodes import clean_astext

logger = logging.getLogger(__name__)

ROLE = re.compile(r"\{(?P<name>[a-zA-Z][\w:-]*)\}`(?P<text>[^`]*)`")
FENCE_OPEN = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w:-]+)\}[ \t]*(?P<args>.*)$")
EXPLICIT = re.compile(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>$", re.S)
ADMONITIONS = {"note", "tip", "hint", "important", "warning", "caution", "attention", "danger", "error", "seealso"}


def _explicit(text: str) -> tuple[str | None, str]:
    """``"title <target>"`` -> ("title", "target"); ``"target"`` -> (None, "target")."""
    match = EXPLICIT.match(text.strip())
    if match:
        return match["text"], match["target"].strip()
    return None, text.strip()


def _number(numbers) -> str:
    return ".".join(str(n) for n in numbers)


class PlainMarkdown:
    """Rewrites one notebook's MyST markdown into what plain Jupyter renders."""

    def __init__(self, app: Sphinx, docname: str, glued: dict[str, str], citations: dict[str, tuple[str, str]]):
        self.app = app
        self.env = app.env
        self.docname = docname
        self.glued = glued
        self.citations = citations
        self.exercise_of_solution: dict[str, str] = {}

    # ---- numbers and titles, as the website shows them -------------------------------------------------------
    def _fignumber(self, kind: str, label: str) -> str | None:
        for docname in [self.docname, *self.env.toc_fignumbers]:
            numbers = self.env.toc_fignumbers.get(docname, {}).get(kind, {}).get(label)
            if numbers:
                return _number(numbers)
        return None

    def _chapter_title(self, docname: str) -> str:
        title = self.env.titles[docname].astext() if docname in self.env.titles else docname
        secnumber = self.env.toc_secnumbers.get(docname, {}).get("")
        return f"{_number(secnumber)}. {title}" if secnumber else title

    def _exercise_name(self, label: str) -> str:
        number = self._fignumber("exercise", label)
        return f"Exercise {number}" if number else "the exercise"

    # ---- roles ---------------------------------------------------------------------------------------------------
    def _cite(self, name: str, keys: str) -> str:
        parenthetical = name in {"cite", "cite:p", "cite:ps", "cite:alp"}  # {cite} is {cite:p} in sphinxcontrib-bibtex
        texts = []
        for key in (k.strip() for k in keys.split(",")):
            author, year = self.citations.get(key, (key, ""))
            if parenthetical:
                texts.append(f"{author}, {year}" if year else author)
            else:
                texts.append(f"{author} ({year})" if year else author)
        return f"({'; '.join(texts)})" if parenthetical else "; ".join(texts)

    def _glue(self, text: str) -> str:
        key, _, spec = text.partition(":")
        if key not in self.glued:
            logger.warning(f"minilora_site: {self.docname} has no glued value {key!r}")
            return text
        value = self.glued[key]
        if spec:
            try:
                return format(float(value), spec)
            except ValueError:
                return value
        return value

    def _ref(self, text: str) -> str:
        title, label = _explicit(text)
        if title:
            return title
        std = self.env.get_domain("std")
        if self._fignumber("exercise", label):
            return self._exercise_name(label)
        if label in std.labels:
            return std.labels[label][2]
        return label

    def _numref(self, text: str) -> str:
        title, label = _explicit(text)
        for kind, word in (("figure", "Fig."), ("table", "Table"), ("code-block", "Listing"), ("exercise", "Exercise")):
            number = self._fignumber(kind, label)
            if number:
                return title.replace("%s", number).replace("{number}", number) if title else f"{word} {number}"
        return title or label

    def _doc(self, text: str) -> str:
        title, target = _explicit(text)
        docname = (Path(self.docname).parent / target).as_posix() if not target.startswith("/") else target[1:]
        docname = re.sub(r"[^/]+/\.\./", "", docname)
        title = title or self._chapter_title(docname)
        source = self.env.doc2path(docname, base=False) if docname in self.env.all_docs else f"{target}.ipynb"
        link = Path(source).name if Path(source).suffix == ".ipynb" else f"{Path(source).stem}.html"
        return f"[{title}]({link})"

    def role(self, match: re.Match) -> str:
        name, text = match["name"], match["text"]
        if name.startswith("cite"):
            return self._cite(name, text)
        if name.startswith("glue"):
            return self._glue(text)
        if name == "doc":
            return self._doc(text)
        if name == "ref":
            return self._ref(text)
        if name in {"numref", "eq"}:
            return self._numref(text) if name == "numref" else f"({text})"
        if name == "term":
            return _explicit(text)[0] or text
        if name == "math":
            return f"${text}$"
        if name in {"code", "literal", "samp", "file", "kbd", "command", "envvar"}:
            return f"`{text}`"
        return _explicit(text)[0] or _explicit(text)[1]

    # ---- directives ----------------------------------------------------------------------------------------------
    def _literalinclude(self, args: str, options: dict[str, str]) -> str:
        from sphinx.directives.code import LiteralIncludeReader

        here = Path(self.env.doc2path(self.docname)).parent
        path = (here / args.strip()).resolve()
        reader_options = {k: (True if v == "" else v) for k, v in options.items() if k not in {"caption", "name"}}
        if "dedent" in reader_options:  # `:dedent:` alone removes the common indentation (Sphinx passes None)
            reader_options["dedent"] = None if reader_options["dedent"] is True else int(reader_options["dedent"])
        try:
            code, _ = LiteralIncludeReader(str(path), reader_options, self.app.config).read()
        except Exception as error:  # the website build has already reported a bad include
            logger.warning(f"minilora_site: {self.docname}: cannot read {path}: {error}")
            code = ""
        shown = path.relative_to(Path(self.app.srcdir).resolve()).as_posix() if path.is_relative_to(
            Path(self.app.srcdir).resolve()) else path.name
        what = f"`{options['pyobject']}` in `{shown}`" if "pyobject" in options else f"`{shown}`"
        language = options.get("language", "python" if path.suffix == ".py" else "")
        return f"The source of {what}:\n\n```{language}\n{code.rstrip()}\n```"

    def directive(self, name: str, args: str, options: dict[str, str], body: str) -> str:
        body = self.convert(body).strip()
        if name == "exercise":
            label = options.get("label", "")
            heading = self._exercise_name(label).replace("the exercise", "Exercise")
            heading += f" ({args.strip()})" if args.strip() else ""
            return f"**{heading}**\n\n{body}".rstrip()
        if name == "solution-start":
            self.solution_label = args.strip()
            return f"**Solution ({self._exercise_name(args.strip())}).**\n\n{body}".rstrip()
        if name == "solution-end":
            return "---"
        if name == "solution":
            return f"**Solution ({self._exercise_name(args.strip())}).**\n\n{body}"
        if name == "literalinclude":
            return self._literalinclude(args, options)
        if name in {"math", "equation"}:
            return f"$$\n{body}\n$$"
        if name in {"code-block", "code", "code-cell", "sourcecode"}:
            return f"```{args.strip()}\n{body}\n```"
        if name == "bibliography":
            return "The works cited are listed on the website's Bibliography page."
        if name in ADMONITIONS or name == "admonition" or name.startswith("dropdown"):
            title = args.strip() or name.capitalize()
            return f"**{title}.** {body}".rstrip()
        title = f"{name.capitalize()} {args.strip()}".strip()
        return f"**{title}**\n\n{body}".rstrip()

    # ---- a whole markdown cell -----------------------------------------------------------------------------------
    def convert(self, text: str) -> str:
        lines = text.split("\n")
        out: list[str] = []
        i = 0
        while i < len(lines):
            match = FENCE_OPEN.match(lines[i])
            if not match:
                out.append(lines[i])
                i += 1
                continue
            fence, name, args = match["fence"], match["name"], match["args"]
            i += 1
            options: dict[str, str] = {}
            while i < len(lines) and re.match(r"^:[\w-]+:", lines[i]):
                key, _, value = lines[i][1:].partition(":")
                options[key.strip()] = value.strip()
                i += 1
            body: list[str] = []
            while i < len(lines) and lines[i].strip() != fence:
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence
            out.append(self.directive(name, args, options, "\n".join(body)))
        text = "\n".join(out)
        text = re.sub(r"\*\*Solution \((Exercise [\d.]+|the exercise)\)\.\*\*\s*\n\n\*\*Solution\.\*\*",
                      r"**Solution (\1).**", text)
        return ROLE.sub(self.role, text)


def _glued_values(notebook: dict) -> dict[str, str]:
    """Every value the notebook glued (myst_nb.glue writes a display_data output with `scrapbook` metadata)."""
    values = {}
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            scrapbook = output.get("metadata", {}).get("scrapbook")
            if not scrapbook:
                continue
            prefix = scrapbook.get("mime_prefix", "")
            text = output.get("data", {}).get(prefix + "text/plain")
            if text is None:
                continue
            text = "".join(text) if isinstance(text, list) else text
            try:
                value = ast.literal_eval(text)
                values[scrapbook["name"]] = value if isinstance(value, str) else text
            except (ValueError, SyntaxError):
                values[scrapbook["name"]] = text
    return values


def _citations(app: Sphinx) -> dict[str, tuple[str, str]]:
    """key -> ("Hu et al.", "2021") for every entry of the book's .bib files."""
    from pybtex.database import parse_file

    def clean(text: str) -> str:
        return re.sub(r"[{}\\]", "", text).strip()

    citations = {}
    for bib in app.config.bibtex_bibfiles:
        for key, entry in parse_file(str(Path(app.srcdir) / bib)).entries.items():
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [clean(" ".join(p.prelast_names + p.last_names)) or clean(str(p)) for p in people]
            if not names:
                author = clean(entry.fields.get("organization", entry.fields.get("title", key)))
            elif len(names) == 1:
                author = names[0]
            elif len(names) == 2:
                author = f"{names[0]} and {names[1]}"
            else:
                author = f"{names[0]} et al."
            citations[key] = (author, clean(entry.fields.get("year", "")))
    return citations


def rewrite_downloads(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    sources = Path(app.outdir) / "_sources"
    citations = _citations(app)
    rewritten = 0
    for docname in sorted(app.env.found_docs):
        copy = sources / f"{docname}.ipynb"
        if not copy.is_file():
            continue
        notebook = json.loads(copy.read_text(encoding="utf-8"))
        plain = PlainMarkdown(app, docname, _glued_values(notebook), citations)
        for cell in notebook["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = plain.convert(source)
        if notebook["cells"] and notebook["cells"][0]["cell_type"] == "markdown":
            number = app.env.toc_secnumbers.get(docname, {}).get("")
            first = notebook["cells"][0]["source"]
            if number and not first.startswith(f"# {_number(number)}. "):  # the number the sidebar shows
                notebook["cells"][0]["source"] = re.sub(r"^# ", f"# {_number(number)}. ", first, count=1)
        copy.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        rewritten += 1
    logger.info(f"minilora_site: {rewritten} downloadable notebooks rewritten for plain Jupyter")


class NumberedDocLinks(SphinxPostTransform):
    """A ``{doc}`05_choosing_the_rank` `` link shows the chapter's number with its title ("5. Choosing the rank"),
    as the sidebar does, so that "Exercise 5.2" and "chapter 5" can be found. Sphinx's own {doc} shows the title
    alone. Runs before the references are resolved (priority 10); a link with its own text keeps that text."""

    default_priority = 5

    def run(self, **kwargs) -> None:
        env = self.env
        for node in self.document.findall(addnodes.pending_xref):
            if node.get("reftype") != "doc" or node.get("refexplicit"):
                continue
            docname = docname_join(node.get("refdoc", env.docname), node["reftarget"])
            number = env.toc_secnumbers.get(docname, {}).get("")
            if not number or docname not in env.titles:
                continue
            text = f"{_number(number)}. {clean_astext(env.titles[docname])}"
            classes = node[0].get("classes", []) if len(node) else []
            node.children = [nodes.inline(text, text, classes=classes)]
            node["refexplicit"] = True


TIMES = Path(__file__).resolve().parent / "chapter_times.json"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def chapter_time_substitutions(app: Sphinx, config) -> None:
    """MyST substitutions for book/run_it_yourself.md from chapter_times.json (measure_chapter_times.py writes it):
    {{ time_01_theory }} is that chapter's measured run time, {{ times_machine }} says where and when."""
    if not TIMES.is_file():
        return
    record = json.loads(TIMES.read_text())
    substitutions = dict(config.myst_substitutions or {})
    for chapter in record["chapters"]:
        substitutions["time_" + Path(chapter["notebook"]).stem] = _duration(chapter["seconds"])
    load = max(record["load_average_before"][0], record["load_average_after"][0])
    substitutions["times_machine"] = (
        f"{record['processor']}, {record['cores']} cores, Python {record['python']}, torch {record['torch']}, "
        f"{record['date'][:10]}; the machine was shared (load average up to {load:.1f}), so a quiet laptop is faster"
    )
    config.myst_substitutions = substitutions


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", chapter_time_substitutions)
    app.add_post_transform(NumberedDocLinks)
    app.connect("build-finished", rewrite_downloads)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
