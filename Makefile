# Two entry points, both self-contained on a fresh machine with Python 3.11:
#   make book   set up .venv, build the website into _build/html
#   make test   set up .venv, build the website, run every test and every notebook
#   make serve  serve the built website on http://127.0.0.1:8000 (PORT=8001 for another port)
# For authors: make notebooks   re-execute every notebook in place (outputs to commit; see book/CONTRIBUTING.md)
#              make check-robust   run every notebook twice more, as another processor and with other seeds
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: book test serve notebooks check-robust clean

# Reinstall whenever the pins or the package metadata change. pip shows its progress: the first install downloads
# PyTorch and the rest, which takes minutes.
$(STAMP): requirements.txt pyproject.toml
	@echo "Setting up $(VENV) with the pinned packages of requirements.txt. The first time this takes a few minutes."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $(STAMP)
	@echo "$(VENV) is ready."

# The website, from the outputs committed in the notebooks (no kernel starts). -q drops Sphinx's progress lines and
# the extensions' configuration dumps (warnings still print, and fail the build). Jupyter Book's closing box tells
# readers to open index.html as a file, where search and MathJax's fonts do not work: it goes to the log instead,
# which is printed if the build fails.
book: $(STAMP)
	@echo "Building the website into _build/html from the committed notebook outputs (seconds)..."
	@mkdir -p _build
	@$(BIN)/jupyter-book build . -W -n --keep-going -q > _build/jupyter-book.log || \
		{ cat _build/jupyter-book.log; echo "The website build failed: see the warnings above."; exit 1; }
	@echo "Built. Read it with: make serve   (then open http://127.0.0.1:$(PORT))"

# Over http, not file://: opened as a file, the browser blocks the search index and MathJax's fonts.
serve:
	@test -f _build/html/index.html || { echo "No website in _build/html yet: run make book first."; exit 1; }
	@echo "Serving _build/html on http://127.0.0.1:$(PORT) (Ctrl-C stops it)"
	$(PYTHON) -m http.server --bind 127.0.0.1 --directory _build/html $(PORT)

# Two workers: the tiny model's training steps keep little more than one core busy (the kernel runs at about 120% CPU),
# so two notebooks at a time use the two cores of CI better than one. Each kernel still starts one OpenMP thread per
# core; OMP_WAIT_POLICY=PASSIVE makes an idle one sleep instead of spinning on a core the other worker needs (it
# changes no result, only how threads wait). --dist loadscope keeps every cell of a notebook, and every test of a
# module, on one worker, in order.
# nbval compares verbatim only what is exact on every machine; tests/nbval_sanitize.cfg masks what is not.
NBVAL := --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
test: book
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n 2 --dist loadscope --durations 15 tests book --nbval $(NBVAL)

# Every notebook, with its hidden checks, twice more in nbval's lax mode (outputs not compared, errors fail):
# once with the generic vector kernels (ATEN_CPU_CAPABILITY=default: other rounding, a stand-in for another
# processor), once with other seeds. A claim that fails either is one run's accident, not a finding.
ROBUST_SEEDS ?= 100,101,102
check-robust: $(STAMP)
	ATEN_CPU_CAPABILITY=default OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n 2 --dist loadscope \
		-p no:cacheprovider book --nbval-lax $(NBVAL)
	MINILORA_SEEDS=$(ROBUST_SEEDS) OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n 2 --dist loadscope \
		-p no:cacheprovider book --nbval-lax $(NBVAL)

notebooks: $(STAMP)
	$(BIN)/python scripts/execute_notebooks.py

clean:
	rm -rf _build
