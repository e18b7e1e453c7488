# semiseg: the commands a user needs. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
SLOW ?= 0
# Never reach a model hub or W&B's servers from the make targets.
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= offline

.PHONY: help setup train test lint format compare bench report select clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install semiseg with its dev tools (idempotent)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# The first run: UniMatch on the toy's 10 labels, on the fast path, beside supervised's figure.
FIRST_RUN := experiment=first_run

train: setup  ## the first run (UniMatch, toy, minutes); ARGS="method=... split=..." trains that instead
	$(PY) train.py $(if $(ARGS),$(ARGS),$(FIRST_RUN))

test: setup  ## the fast tests on the CPU; SLOW=1 adds the slow end-to-end and fault tests (what CI runs)
	$(PY) -m pytest tests $(if $(filter 1,$(SLOW)),,-m "not slow") $(ARGS)

lint: setup  ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

compare: setup  ## methods on one toy split (ARGS="methods=supervised,imas,augseg"): table + plot in outputs/compare (3 default methods: about 25 min)
	$(PY) -m semiseg.tools.compare $(ARGS)

bench: setup  ## time training steps against their model compute (bench.vit_table=true: the DINOv2 + DPT memory table): ARGS="method=unimatch model.encoder=resnet101 dataset.crop_size=321 data.batch_size=2"
	$(PY) -m semiseg.tools.bench $(ARGS)

report: setup  ## paper-style table of a sweep: ARGS="multirun/NAME"
	$(PY) -m semiseg.tools.report $(ARGS)

select: setup  ## the images to label next: ARGS="ckpt_path=RUN/checkpoints/best.ckpt budget=10 strategy=entropy output=DIR"
	$(PY) select_images.py $(ARGS)

clean:  ## remove caches and run outputs (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache
