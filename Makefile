# microseg: `make demo` runs the whole pipeline on generated data; `make test` runs the tests
# (`make test-fast`: the unit tests only).
# Both set themselves up on a fresh machine (a virtualenv in .venv with everything pinned in pyproject.toml).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CUSTOMERS ?= 20000
DATA ?= data/synthetic
KEY_FILE := .microseg_key
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: install demo test test-faults test-fast ui sql sql-server bench lint clean env-archive

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The demo needs an HMAC key in MICROSEG_HASH_KEY. If none is set, a local one is made once
# in $(KEY_FILE) (git-ignored, demo only); in production the key comes from your secret store.
demo: install
	@if [ -z "$$MICROSEG_HASH_KEY" ] && [ ! -s $(KEY_FILE) ]; then \
		$(BIN)/python -c 'import secrets; print(secrets.token_hex(32))' > $(KEY_FILE); \
		echo "microseg: made a local demo HMAC key in $(KEY_FILE) (set MICROSEG_HASH_KEY to use your own)"; \
	fi
	@if [ ! -f $(DATA)/_manifest.json ]; then \
		MICROSEG_HASH_KEY=$${MICROSEG_HASH_KEY:-$$(cat $(KEY_FILE))} $(BIN)/microseg datagen --customers $(CUSTOMERS) --out $(DATA); \
	fi
	MICROSEG_HASH_KEY=$${MICROSEG_HASH_KEY:-$$(cat $(KEY_FILE))} $(BIN)/microseg run --conf conf/local.yaml --set sources.root=$(DATA) \
		--as-of $$($(BIN)/python -c 'import json; print(json.load(open("$(DATA)/_manifest.json"))["end_date"])') $(RUN_ARGS)

# Every test: unit, integration (with PostgreSQL and the Online Retail data) and cluster. Make fails
# with pytest's failure, also exit code 5 (no test collected). PYTEST_ARGS passes options through,
# e.g. make test PYTEST_ARGS='--durations=30'.
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# The fault suite alone (make test runs it too): the SIGKILL-and-restart chain and the concurrent runs.
test-faults: install
	$(BIN)/pytest tests/faults $(PYTEST_ARGS)

# The unit tests alone (tiny DataFrames, one Spark session): a couple of minutes.
test-fast: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/lake/mlflow.db --host 127.0.0.1 --port 5000

# spark-sql and the Spark Thrift Server on the project's tables by name (README, "Tables by name").
sql: install
	$(BIN)/microseg sql --conf conf/local.yaml

sql-server: install
	$(BIN)/microseg sql-server --conf conf/local.yaml --host 127.0.0.1 --port 10000

bench: install
	MICROSEG_HASH_KEY=$${MICROSEG_HASH_KEY:-bench-key-not-secret-0123456789} $(BIN)/microseg bench --customers $(CUSTOMERS) $(BENCH_ARGS)

# The Python environment for Spark executors (spark-submit --archives), see README.
env-archive: install
	scripts/pack_env.sh $(VENV)

# Style (ruff, pinned in pyproject.toml) and the import rule between stages (import-linter).
lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

clean:
	rm -rf lake data bench build reports spark-warehouse
