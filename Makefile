# The two commands of the README: `make demo` and `make test` (each installs what it needs first).
PYTHON ?= python3

.PHONY: setup demo test test-all protos

setup:
	./scripts/setup.sh

demo:
	FTRAIN_SETUP_MINIMAL=1 ./scripts/setup.sh
	$(PYTHON) -m ftrain demo

test: setup
	./scripts/test.sh

protos:
	./scripts/gen_protos.sh
