# fastflow: `make demo` trains a small Wolf on bundled real images; `make test` runs the test suite.
# Both install everything they need into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo lint test test-all test-kernels test-portable test-oldest bench clean

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

# The suite on the code paths of other CPUs (docs/testing.md): ATen, oneDNN and MKL held to AVX2 (an AMD
# EPYC without AVX-512: no native bfloat16 dot products, no AMX) on 2 threads, then everything on 1
# thread. TESTS=... narrows it to some files.
AVX2_ONLY := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 FASTFLOW_TEST_THREADS=1
TESTS ?= tests
test-portable: $(STAMP)
	$(AVX2_ONLY) FASTFLOW_TEST_THREADS=2 $(PY) -m pytest -q -m "not slow" $(TESTS)
	$(ONE_THREAD) $(PY) -m pytest -q -m "not slow" $(TESTS)

# The oldest stack fastflow claims (README "Supported versions"), installed as a GPU image installs
# fastflow beside its own torch: torch, torchvision (Triton comes with torch) and the test tools first,
# then fastflow with --no-deps --no-build-isolation. Python 3.12 (the GPU machine's), so that its
# extension (_C.cpython-312-*.so) and build folder never clash with the dev venv's (Python 3.11).
# pip is upgraded first: pip 23.2 (a fresh venv's) with setuptools 81 runs `setup.py develop`, which
# builds no extension (fastflow then compiles it on first use, and says so). A pre-release check, not
# in CI: the torch 2.11 wheels (several GB) come from PyPI, the dev stack from this machine's disk.
OLDEST_VENV := .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
OLDEST_STAMP := $(OLDEST_VENV)/.installed
PYTHON_OLDEST ?= python3.12
OLDEST_STACK := torch==2.11.0 torchvision==0.26.0 triton==3.6.0 numpy==2.2.6

$(OLDEST_STAMP): setup.py fastflow/_build.py $(wildcard csrc/* csrc/cuda/*)
	test -x $(OLDEST_PY) || $(PYTHON_OLDEST) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install --quiet --upgrade pip
	$(OLDEST_PY) -m pip install --quiet $(OLDEST_STACK) ninja wheel pytest tqdm scikit-learn \
		matplotlib normflows==1.7.3
	$(OLDEST_PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(OLDEST_STAMP)

test-oldest: $(OLDEST_STAMP)
	$(OLDEST_PY) -m pytest -q -m "not slow" tests

# Machine code of every Triton kernel at benchmark shapes, compiled for sm_80/sm_90 without a GPU.
test-kernels: $(STAMP)
	$(PY) -m pytest -q tests/test_kernel_machine_code.py

bench: $(STAMP)
	$(PY) -m benchmarks suite

clean:
	rm -rf build *.egg-info fastflow/_C*.so demo_out
