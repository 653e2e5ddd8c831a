# Entry points (docs/contract.md §1): make demo, make test, make bench.
# The interpreter: the distribution's /usr/bin/python3 when it is 3.11+ with
# venv, else python3 on PATH. Distribution builds are compiled with PGO and
# LTO; pyenv's default builds are not and run the gateway ~25% slower
# (docs/benchmarks.md). `make PYTHON=...` picks another.
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
            2>/dev/null && echo /usr/bin/python3 || echo python3)
PYHOME := $(shell $(PYTHON) -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)-$(shell echo '$(PYHOME)' | cksum | cut -d' ' -f1)

# Modules with a .pxd beside them are compiled with Cython (setup.py), and the nghttp2
# binding (a .pyx, with its own .pxd); the
# build is redone in place whenever one of them changes. Without a C
# compiler they run as plain Python (tollhouse/__init__.py picks).
COMPILED := $(filter-out src/tollhouse/exchange/nghttp2.pxd,$(wildcard src/tollhouse/*.pxd src/tollhouse/*/*.pxd src/tollhouse/*/*/*.pxd))
BUILT    := $(VENV)/.built

.PHONY: demo test lint bench redis-server http2-tools waf-tools monitoring-tools browser deploy-tools oidc-provider hive-gateway bench-tools clean

$(STAMP): pyproject.toml
	@if [ -f $(VENV)/pyvenv.cfg ] && ! grep -qx 'home = $(PYHOME)' $(VENV)/pyvenv.cfg; then \
	  echo "$(VENV) was made with another interpreter: recreating it with $(PYTHON)"; rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

$(BUILT): $(STAMP) setup.py $(COMPILED) $(COMPILED:.pxd=.py) src/tollhouse/exchange/nghttp2.pyx src/tollhouse/exchange/nghttp2.pxd
	$(BIN)/python setup.py -q build_ext --inplace
	touch $(BUILT)

demo: $(BUILT)
	$(BIN)/tollhouse demo

# Tests start real redis-server processes on ephemeral ports.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing. Install it first: 'sudo apt-get install redis-server' (Debian/Ubuntu), 'sudo dnf install redis' (Fedora) or 'brew install redis' (macOS)."; \
	    exit 1; \
	  fi; }

# HTTP/2 is nghttp2 (the C library, bound at build time: libnghttp2-dev); its tests use
# nghttp2-client's nghttp and h2load as real clients. Without the headers the build serves
# HTTP/1.1 only (docs/http2.md).
http2-tools:
	@{ [ -f /usr/include/nghttp2/nghttp2.h ] && command -v h2load >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing libnghttp2-dev and nghttp2-client with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libnghttp2-dev nghttp2-client >/dev/null; \
	  else \
	    echo "libnghttp2-dev and nghttp2-client are missing. Install them first: 'sudo apt-get install libnghttp2-dev nghttp2-client' (Debian/Ubuntu)."; \
	    exit 1; \
	  fi; }

# The WAF runs the OWASP Core Rule Set as Debian ships it (modsecurity-crs) after ModSecurity's
# recommended base configuration (libnginx-mod-http-modsecurity's, which the benchmark's nginx uses too).
waf-tools:
	@{ [ -d /usr/share/modsecurity-crs/rules ] && [ -f /etc/nginx/modsecurity.conf ]; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing modsecurity-crs and libnginx-mod-http-modsecurity with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends modsecurity-crs libnginx-mod-http-modsecurity >/dev/null; \
	  else \
	    echo "modsecurity-crs is missing. Install it first: 'sudo apt-get install modsecurity-crs libnginx-mod-http-modsecurity' (Debian/Ubuntu)."; \
	    exit 1; \
	  fi; }

# The monitoring tests run the shipped alert rules and dashboard through a real
# Prometheus (and promtool), and the alert routing through a real Alertmanager (and amtool).
monitoring-tools:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing prometheus (and promtool) and prometheus-alertmanager (and amtool) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; \
	  else \
	    echo "prometheus, promtool and amtool are missing. Install them first: 'sudo apt-get install prometheus prometheus-alertmanager' (Debian/Ubuntu)."; \
	    exit 1; \
	  fi; }

# The dashboard's page is tested in a real browser: Debian's chromium, driven by Selenium.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	  else \
	    echo "chromium and chromedriver are missing. Install them first: 'sudo apt-get install chromium chromium-driver' (Debian/Ubuntu)."; \
	    exit 1; \
	  fi; }

# Browser logins are tested against a real OpenID provider: the npm package oidc-provider
# (OpenID Certified), installed from its lock file with the machine's Node.js.
OIDC_DIR := tests/support/oidc
oidc-provider: $(OIDC_DIR)/node_modules/.package-lock.json
$(OIDC_DIR)/node_modules/.package-lock.json: $(OIDC_DIR)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing nodejs and npm with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; \
	  else \
	    echo "npm is missing. Install Node.js 20+ first: 'sudo apt-get install nodejs npm' (Debian/Ubuntu)."; \
	    exit 1; \
	  fi; }
	npm ci --prefix $(OIDC_DIR) --no-audit --no-fund --loglevel=error
	touch $@

# The deployment files are checked by real tools: kubectl (Debian's kubernetes-client) renders the
# Kustomize base, kubernetes-validate and checkov (in a venv of their own: their dependencies
# would clash with the gateway's pins) check what it renders.
DEPLOY_VENV := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed-checkov-3.3.30-kv-1.37.0
deploy-tools: $(DEPLOY_STAMP)
	@command -v kubectl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing kubernetes-client (kubectl) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null; \
	  else \
	    echo "kubectl is missing. Install it first: 'sudo apt-get install kubernetes-client' (Debian/Ubuntu)."; \
	    exit 1; \
	  fi; }

$(DEPLOY_STAMP):
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install -q checkov==3.3.30 kubernetes-validate==1.37.0
	touch $(DEPLOY_STAMP)

# A pinned ruff with a small ruleset (pyproject.toml [tool.ruff]); `make test` runs it first.
lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples

# The whole suite runs twice: on the compiled build, then on the plain-Python
# source (the fallback without a compiler), which must behave the same. Each pass
# runs its tests in TEST_WORKERS processes (pytest-xdist): most of a test's time is
# spent waiting on the real processes it starts, so two workers halve the wall
# time on two cores (docs/architecture.md, "Tests").
TEST_WORKERS ?= 2
test: http2-tools waf-tools lint $(BUILT) redis-server monitoring-tools browser deploy-tools oidc-provider
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests
	TOLLHOUSE_PURE_PYTHON=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) tests

bench-tools:
	@for tool in nginx wrk; do command -v $$tool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null; \
	  else echo "$$tool is missing: 'sudo apt-get install nginx wrk'"; exit 1; fi; }; done

# GraphQL federation's anchor: Hive Gateway from npm, installed from its lock file.
hive-gateway: bench/hive/node_modules/.package-lock.json
bench/hive/node_modules/.package-lock.json: bench/hive/package-lock.json
	npm ci --prefix bench/hive --no-audit --no-fund --loglevel=error
	touch $@

bench: http2-tools waf-tools oidc-provider hive-gateway redis-server $(BUILT) bench-tools
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install -q matplotlib==3.11.2
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) build src/*.egg-info .pytest_cache
	find src -name '*.so' -delete -o -name '*.c' -delete
