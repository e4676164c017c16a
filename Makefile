# The two commands a newcomer needs:   make lab    make test
# Everything else: make notebooks, make bench, make lint, make present NB=03, make doctor, make update

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NB     ?= 00
PORT   ?= 8888
# JupyterLab refuses to run as root without --allow-root (containers, CI, some JupyterHubs).
ROOT_FLAG := $(shell [ "$$(id -u)" = "0" ] && echo --allow-root)

.PHONY: lab test unit notebooks bench lint present doctor update clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python tools/jupyter_settings.py $(VENV)
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG) --port=$(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

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

doctor: $(STAMP)
	$(BIN)/python -m numlab doctor

update:
	$(PYTHON) tools/update.py

clean:
	rm -rf $(VENV)
