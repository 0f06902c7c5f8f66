# Every target sets up what it needs on a fresh machine, then runs.
#   make test   - venv + packages + browser, then the test suite
#   make lint   - ruff check and ruff format --check
#   make bench  - every benchmark in bench/, one table of ratios at the end
#   make demo   - the whole pipeline against the offline imitation, in demo/
#   make locale - check the translations (stubs for missing ones)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# torch/torchvision: the pair that imports cleanly with pyiqa on a CPU machine
# (see docs/architecture.md). Override for a CUDA machine, e.g.
#   make venv TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
# pip's notes about unreachable local indexes are noise; its exit status is kept.
QUIET  := 2>&1 | { grep -v "is ignored" || true; }
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: venv browser test lint format bench peers demo locale clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip $(QUIET)
	$(PIP) install $(TORCH_SPEC) $(QUIET)
	$(PIP) install -r requirements-dev.txt $(QUIET)
	$(PY) -c "import torch, torchvision, pyiqa, playwright, aiohttp, PIL, imagehash, rich, tldextract"
	touch $@

browser: $(STAMP)
	$(PY) -m yandex_reverse.browser --install

# Two test processes, each taking whole test files (module fixtures run once): on two
# cores the suite waits on servers, browsers and Ray starts about half its time.
# `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 2
test: venv browser
	$(PY) -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv browser peers
	$(PIP) install -r requirements-bench.txt $(QUIET)
	$(PY) bench/run_all.py

# Peers from Debian that the benchmarks compare against: installed when
# missing and root with apt-get, else one line says what is skipped and why.
DEB_PEERS := jdupes
peers:
	@for tool in $(DEB_PEERS); do \
	  if command -v $$tool >/dev/null; then continue; fi; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get install -y -q $$tool || { apt-get update -q && apt-get install -y -q $$tool; }; } >/dev/null 2>&1 \
	      || echo "peers: apt-get could not install $$tool: its benchmark rows are skipped"; \
	  else \
	    echo "peers: $$tool is not installed and this is not root with apt-get: its benchmark rows are skipped (sudo apt-get install $$tool)"; \
	  fi; \
	done

demo: venv browser
	$(PY) -m yandex_reverse.demo

# Translations: .po stubs for untranslated messages, then the catalogue test.
# (No compiling: the .po files are read directly, see yandex_reverse/i18n.py.)
locale: venv
	$(PY) -m yandex_reverse.i18n missing
	$(PY) -m pytest -q tests/test_i18n.py

clean:
	rm -rf demo bench/_work .pytest_cache .ruff_cache
