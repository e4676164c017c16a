# The two commands a newcomer needs:   make lab    make test
# Everything else: make notebooks, make bench, make lint, make present NB=03, make doctor, make update,
#                  make book (the web book, into _build/html),
#                  make assignments (the nbgrader course, into _build/course)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A second, small kernel environment with ipywidgets 7 (Colab's front end renders 7.x):
# numlab, the test tools and ipywidgets 7, no JupyterLab. Built once, then reused.
VENV7  := .venv-widgets7
STAMP7 := $(VENV7)/.installed
NB     ?= 00
BOOK   ?= _build
COURSE ?= _build/course
PORT   ?= 8888
# JupyterLab refuses to run as root without --allow-root (containers, CI, some JupyterHubs).
ROOT_FLAG := $(shell [ "$$(id -u)" = "0" ] && echo --allow-root)

.PHONY: lab test test-widgets7 unit notebooks bench lint present doctor update book assignments clean

$(STAMP): pyproject.toml constraints.txt tools/jupyter_settings.py $(wildcard share/jupyter/voila/templates/numlab/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python tools/jupyter_settings.py $(VENV)
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG) --port=$(PORT)

# Two pytest-xdist workers, a test file or notebook each at a time, every browser test on
# one of them (conftest.py says why); `$(BIN)/python -m pytest` runs the same tests serially.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile
	$(MAKE) test-widgets7

$(STAMP7): pyproject.toml constraints.txt
	test -x $(VENV7)/bin/python || $(PYTHON) -m venv $(VENV7)
	$(VENV7)/bin/python -m pip install -q --upgrade pip
	$(VENV7)/bin/python -m pip install -q -c constraints.txt 'ipywidgets>=7.7,<8' -e '.[test]'
	touch $(STAMP7)

# The headless widget tests and notebooks 00 and 03 under ipywidgets 7.
test-widgets7: $(STAMP7)
	$(VENV7)/bin/python -c "import ipywidgets, sys; sys.exit(not ipywidgets.__version__.startswith('7.'))"
	$(VENV7)/bin/python -m pytest -q -n 2 --dist loadfile -m "not browser" tests/test_viz_*.py \
		notebooks/00_floating_point.ipynb notebooks/03_stable_softmax.ipynb

unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not browser"

notebooks: $(STAMP)
	$(BIN)/python tools/run_notebooks.py $(NOTEBOOKS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .

present: $(STAMP)
	$(BIN)/voila $$(ls notebooks/$(NB)_*.ipynb | head -n 1) --port=$(PORT)

# The web book: the committed notebooks (not re-executed) as a static site in $(BOOK)/html
book: $(STAMP)
	$(BIN)/python tools/book.py $(BOOK)

# The classroom course: nbgrader's source and release versions, config and gradebook in $(COURSE)
assignments: $(STAMP)
	$(BIN)/python tools/assignments.py $(COURSE)

doctor: $(STAMP)
	$(BIN)/python -m numlab doctor

update:
	$(PYTHON) tools/update.py

clean:
	rm -rf $(VENV) $(VENV7) _build
