# Two entry points: `make demo` and `make test`. Each builds .venv from the pins
# (requirements.lock + pyproject.toml) when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_WORKDIR ?= demo_workdir
# Parallel test workers; CI has 2 cores.
PYTEST_WORKERS ?= 2

.PHONY: demo test test-slow venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/avjax demo --workdir $(DEMO_WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15

# One process: the slow tests share one corpus and its feature sets through
# module fixtures, which xdist workers would each build again.
test-slow: $(STAMP)
	$(PY) -m pytest -m slow -p no:xdist --durations=0

clean:
	rm -rf $(VENV) $(DEMO_WORKDIR) .pytest_cache
