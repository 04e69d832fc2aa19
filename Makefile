# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
# torch is installed first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
# Override with e.g. `make test TORCH=torch`.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.trainlens-installed

.PHONY: demo test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip show torch | grep ^Version > $(VENV)/.torch-version
	# the extras run the Lightning and Hugging Face tests; they must keep the torch above
	$(BIN)/python -m pip install -q -e ".[test,lightning,transformers]"
	$(BIN)/python -m pip show torch | grep ^Version | cmp -s - $(VENV)/.torch-version \
		|| { echo "installing the extras replaced $(TORCH): see pip show torch"; exit 1; }
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/trainlens demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) trainlens-runs .pytest_cache build dist
