# Two commands on a fresh machine: `make run` (set-up, train, inference on the sample data) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PLAN ?= experimental_plan.yaml

.PHONY: install run train inference test lint sample-data clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) main.py --mode all --config $(PLAN)

train: $(STAMP)
	$(PY) main.py --mode train --config $(PLAN)

inference: $(STAMP)
	$(PY) main.py --mode inference --config $(PLAN)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

sample-data: $(STAMP)
	$(PY) solution/make_sample_data.py

clean:
	rm -rf train_artifacts inference_artifacts history .alo
