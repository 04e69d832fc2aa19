# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
# torch is installed first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
# Override with e.g. `make test TORCH=torch`.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.trainlens-installed

.PHONY: demo test lint install clean browser

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

# The drill.html test opens the page in a headless Chromium. Install one where this machine
# allows it (root with apt-get); never fail the build over it: the test then says it skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| command -v google-chrome >/dev/null 2>&1 \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
			&& { apt-get install -y -q chromium >/dev/null 2>&1 \
				|| { apt-get update -q >/dev/null 2>&1 \
					&& apt-get install -y -q chromium >/dev/null 2>&1; }; }; } \
		|| echo "no Chromium here (not root, or no apt-get): the drill.html browser test will skip"

# one pytest worker per core (pytest-xdist): every test makes its own files and ports
test: $(STAMP) lint browser
	$(BIN)/python -m pytest -n auto

clean:
	rm -rf $(VENV) trainlens-runs .pytest_cache build dist
