# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch: the CPU build. A plain `pip install torch` on Linux pulls a multi-GB CUDA build, so torch is
# installed on its own first, pinned; set TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) where
# the CPU wheel is not already on a local find-links path.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test,serve,report,tune]"
	touch $@

demo: setup
	$(VENV)/bin/distill demo

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs
