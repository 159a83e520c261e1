# The two commands of the README. Both do all set-up on a fresh machine and are
# quick when it is already done.
#   make demo   run the hub, three simulated sites and their gateways (Ctrl-C stops)
#   make test   lint, type-check and run the whole test suite

# The system's Python when there is one: run as root, the hub starts each person's server
# under an account of their own (usreview/hub/spawner.py), which must be able to run the
# environment's Python; one installed under a private home (pyenv in /root) it cannot.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.usreview-installed
DEMO   ?= demo
# The suite runs in this many processes (pytest-xdist), each taking whole test files, so
# a file's shared fixtures (a running hub, a PostgreSQL server) are started once.
TEST_PROCESSES ?= 2
# Debian packages the tests drive for real: dciodvfy (dicom3tools), dcmtk's storescu
# (a scanner), Orthanc (a site's PACS), a PostgreSQL server that the store tests
# start on a private socket, and chromium for the dashboards' browser tests (Playwright
# drives it; it never downloads a browser of its own).
DEBIAN_PACKAGES = dicom3tools dcmtk orthanc postgresql chromium fonts-dejavu-core

PROXY   = hub_config/node_modules/.bin/configurable-http-proxy

.PHONY: demo test setup system clean bench

setup: $(STAMP) $(PROXY)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $$SUDO apt-get install -y -qq --no-install-recommends python3-venv; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,hub]'
	touch $(STAMP)

system:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The proxy JupyterHub drives (npm's configurable-http-proxy, pinned by the lock file).
$(PROXY): hub_config/package.json hub_config/package-lock.json
	@command -v npm >/dev/null || { if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm; }
	npm ci --prefix hub_config --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(BIN)/usreview demo --out $(DEMO)

test: setup system
	$(BIN)/ruff check usreview tests benchmarks
	$(BIN)/ruff format --check usreview tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(DEMO) hub_config/node_modules .pytest_cache .mypy_cache .ruff_cache
