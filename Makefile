# Two commands set up everything on a fresh machine:
#   make train   the main job: the tutorial recipe on real Fashion-MNIST (ARGS="..." adds flags)
#   make test    ruff and the whole pytest suite
# Both create .venv and install the data when missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
TEXT   := /usr/share/games/fortunes/zippy
ARGS   ?=

.PHONY: train test test-readme lint format data bench parity examples device-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[torch,dev]'
	touch $(STAMP)

# The Debian packages where apt is usable: Fashion-MNIST (otherwise jaxnet downloads it into
# ~/.cache on first use) and the GPT's text corpus, fortunes (no download: jaxnet.text needs it).
data:
	@if [ -f $(DATA) ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "dataset-fashion-mnist not installed: jaxnet will download Fashion-MNIST into its cache"; fi
	@if [ -f $(TEXT) ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq fortunes; \
	else echo "fortunes not installed: the GPT's text corpus needs it (apt-get install fortunes, as root)"; fi

train: $(STAMP) data
	$(BIN)/jaxnet train --save runs/checkpoint --metrics runs/metrics.jsonl --plot runs/metrics.png $(ARGS)

test: $(STAMP) data
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15 $(ARGS)

# The README's command blocks, as written, in a scratch copy (parity_tests/readme_blocks.py;
# CI runs it after make test: the training demos, the CNN's report, the bench, the device check).
test-readme: $(STAMP) data
	$(BIN)/python -m pytest -m readme -p no:xdist -q --durations=0 parity_tests/test_readme_blocks.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

parity: $(STAMP) data
	$(BIN)/jaxnet parity $(ARGS)

bench: $(STAMP) data
	$(BIN)/jaxnet bench $(ARGS)

# The accelerator check: the system python (a GPU machine is lent bare, with jax, torch and the
# rest preinstalled and no network), the data from $JAXNET_DATA or .devdata/ (the four .gz
# files, carried along), results to docs/*-gpu.* (docs/*-cpu.*, tiny settings, without a GPU).
DEVICE_OUT ?= docs
device-check:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m jaxnet.devicecheck --out $(DEVICE_OUT) $(ARGS)

examples: $(STAMP) data
	$(BIN)/python -m examples.build

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
