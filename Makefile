# Everything a fresh machine needs to run EdgeOps lives here.
#   make simulate   a model's whole life on this laptop (SCENARIO=drift-recovery by default)
#   make test       run the test suite (what CI runs)
#   make check      ruff, mypy and the import-linter contracts (CI runs them before the tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SCENARIO ?= drift-recovery
OUT ?= runs/$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=

.PHONY: simulate test check bench install system-deps browser-deps clean

simulate: $(STAMP) system-deps
	$(BIN)/edgeops simulate --scenario $(SCENARIO) --out $(OUT)

test: $(STAMP) system-deps browser-deps
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# The dev extra (in '.[all]') brings ruff, mypy and import-linter; the stamp installs it.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_packaging.py --quick

install: $(STAMP)

# torch is installed first, pinned, so pip takes the CPU wheel on disk instead of
# resolving a several-GB CUDA build through flwr's or the project's requirements.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

# Mosquitto and Chromium are system packages. Install them where we may (root with apt);
# elsewhere `edgeops simulate` stops at once and prints the command to run, and the console's
# browser test (Playwright driving Debian's chromium) skips saying why.
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      apt-get update -qq && apt-get install -y -qq mosquitto; \
	    else echo "note: mosquitto is not installed (sudo apt-get install -y mosquitto)"; fi; }

# Debian's Chromium, for the console's browser test only (the simulation does not need it).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      apt-get update -qq && apt-get install -y -qq chromium; \
	    else echo "note: chromium is not installed; the console browser test will skip" \
	      "(sudo apt-get install -y chromium)"; fi; }

clean:
	rm -rf $(VENV) runs build *.egg-info
