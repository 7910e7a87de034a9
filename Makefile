# fastflow: `make demo` trains a small Wolf on bundled real images; `make test` runs the test suite.
# Both install everything they need into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo lint test test-all test-kernels bench bench-ops clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

# The dev venv pins exact versions (setup.py asks only for ranges, so that fastflow installs beside a
# user's own torch). torch must be in the venv before the extension builds (no build isolation).
$(STAMP): $(PY) setup.py fastflow/_build.py $(wildcard csrc/* csrc/cuda/*)
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1 ninja numpy
	$(PIP) install --quiet --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m fastflow.cli demo --out demo_out

# ruff's settings are in ruff.toml (line length 120, import order).
lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

# Machine code of every Triton kernel at benchmark shapes, compiled for sm_80/sm_90 without a GPU.
test-kernels: $(STAMP)
	$(PY) -m pytest -q tests/test_kernel_machine_code.py

bench: $(STAMP)
	$(PY) -m benchmarks

bench-ops: $(STAMP)
	$(PY) -m pytest -q benchmarks/test_op_speed.py --benchmark-enable --benchmark-columns=min,median,mean,rounds

clean:
	rm -rf build *.egg-info fastflow/_C*.so demo_out
