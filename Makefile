# pgscore: `make demo` runs the whole flow, `make test` runs every test.
# Both install what they need first: Debian packages (PostgreSQL 15 with
# PL/Python) when missing, the virtualenv, and the server's pinned runtime
# (installed by `pgscore db start` on first use).

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PACKAGES := postgresql-15 postgresql-plpython3-15

.PHONY: setup system demo test test-local test-docker bench clean

setup: system $(VENV)/.installed

system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "pgscore needs:$$missing. Run as root, or: sudo apt-get install -y$$missing (see README: without root)"; exit 1; \
	  fi; \
	  echo "installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { [ "$$(id -u)" -eq 0 ] && apt-get install -y -qq python3-venv >/dev/null; }

$(VENV)/.installed: pyproject.toml loader/runtime-requirements.txt loader/client-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/pgscore demo

# Both halves always run; the target fails if either did, after both summaries.
test: setup
	@set -o pipefail; mkdir -p .pgscore; \
	$(BIN)/python -m pytest -m "not docker" -p no:cacheprovider 2>&1 | tee .pgscore/test-local.log; local=$$?; \
	bash docker/test-docker.sh 2>&1 | tee .pgscore/test-docker.log; docker=$$?; \
	echo "== summary"; \
	echo "local:  $$(grep -E '(passed|failed|error|no tests ran| skipped)' .pgscore/test-local.log | tail -n 1) (exit $$local)"; \
	echo "docker: $$(grep -E '(passed|failed|error|no tests ran| skipped)' .pgscore/test-docker.log | tail -n 1) (exit $$docker)"; \
	[ $$local -eq 0 ] && [ $$docker -eq 0 ]

test-local: setup
	$(BIN)/python -m pytest -m "not docker" -p no:cacheprovider

test-docker: setup
	bash docker/test-docker.sh

bench: setup
	$(BIN)/pgscore bench

clean:
	-$(BIN)/pgscore db stop
	rm -rf $(VENV) .pgscore
