# `make run` installs everything and starts the chat; `make test` runs the test suite.
# Both create .venv on first use and reinstall only when a requirements file or pyproject.toml
# changes. The project itself goes in last, editable and without dependencies (they are the pinned
# ones above): that puts the `ragchat` command on the venv's PATH and ragchat on its sys.path.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run test bench install lock

run: $(VENV)/.installed
	$(BIN)/chainlit run app.py --headless

test: $(VENV)/.installed-test
	$(BIN)/pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/answer_latency.py

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-local.txt requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements-local.txt -c requirements.lock
	$(BIN)/pip install --no-deps --no-build-isolation --check-build-dependencies -e .
	touch $@

# Browser tests drive Debian's Chromium (Playwright cannot download its own browsers here);
# exported PDFs are read back with poppler's pdftotext.
$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	command -v chromium >/dev/null && command -v pdftotext >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium poppler-utils; }
	$(BIN)/pip install -r requirements-test.txt -c requirements.lock
	touch $@

# Pins every installed package (the direct ones are in requirements*.txt) for the next installs.
lock: $(VENV)/.installed-test
	{ echo "# Every package's exact version, as tested; used as constraints by the Makefile."; \
	  echo "# Regenerate after changing requirements*.txt: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | sort -f | sed 's/+cpu$$//'; } > requirements.lock
