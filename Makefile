# tracetap: `make demo` runs the main job, `make test` the whole suite. Both install what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TRACETAP := $(VENV)/bin/tracetap
# Downloads are cached under the state directory, outside the repo (as `tracetap config show` reports).
STATE_DIR ?= $(if $(filter 0,$(shell id -u)),/var/lib/tracetap,$(or $(XDG_STATE_HOME),$(HOME)/.local/state)/tracetap)
export PIP_CACHE_DIR ?= $(STATE_DIR)/pip-cache
export PIP_DISABLE_PIP_VERSION_CHECK := 1
BCC_SRC := /usr/lib/python3/dist-packages/bcc

.PHONY: setup system venv demo test unit integration stack-up stack-down lint-compose clean

setup: system venv
	@$(TRACETAP) stack install

system:
	@infra/setup-system.sh

# The venv is rebuilt only when the package metadata changes.
venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "tracetap needs Python 3.11+ (set PYTHON=...)" >&2; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip
	@$(VENV)/bin/pip install -q -e '.[test]'
	@# bcc is Debian's (the PyPI package named bcc is unrelated): link it into the venv.
	@site=$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  ln -sfn $(BCC_SRC) "$$site/bcc"
	@touch $@

demo: setup
	$(TRACETAP) demo

test: setup
	$(TRACETAP) stack up
	$(VENV)/bin/python -m pytest

unit: venv
	$(VENV)/bin/python -m pytest tests/unit

integration: setup
	$(TRACETAP) stack up
	$(VENV)/bin/python -m pytest tests/integration

stack-up: setup
	$(TRACETAP) stack up

stack-down:
	$(TRACETAP) stack down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
