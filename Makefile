# The two commands of the README: `make demo` and `make test` (each installs what it needs first).
# Unless a virtual environment is active, everything installs into and runs from the project's own
# .venv (made by scripts/setup.sh; it sees the system's site-packages, so an installed torch is
# reused), which works where python3 is "externally managed" (PEP 668: Debian 12, Ubuntu 24.04).
VENV ?= .venv
FTRAIN_BASE_PYTHON ?= $(shell command -v python3)
export FTRAIN_BASE_PYTHON
ifeq ($(strip $(VIRTUAL_ENV)),)
export FTRAIN_VENV := $(abspath $(VENV))
export PATH := $(FTRAIN_VENV)/bin:$(PATH)
endif
PYTHON := python3
export PYTHON
DEMO_ARGS ?=

.PHONY: setup demo test protos

setup:
	./scripts/setup.sh

demo:
	FTRAIN_SETUP_MINIMAL=1 ./scripts/setup.sh
	$(PYTHON) -m ftrain demo $(DEMO_ARGS)

test: setup
	./scripts/test.sh

protos:
	./scripts/gen_protos.sh
