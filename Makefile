# `make demo` and `make test` work as the first command on a fresh machine: both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the pair this environment serves from local disk; on another
# machine set TORCH_SPEC (e.g. TORCH_SPEC="torch torchvision") for your CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export NO_ALBUMENTATIONS_UPDATE := 1
# `make bench` measures on FER2013 where it is, else on the built-in synthetic faces.
FER2013 ?= ../shared/data/fer2013.csv.gz
BENCH_DATA := $(if $(wildcard $(FER2013)),dataset.path=$(FER2013),dataset=synthetic)
DEVICE ?= cpu
BENCH_ARGS ?=
GPU_CHECK_ARGS ?=
# `make wheelhouse`: the offline node's Python and platform (`ldd --version` gives its glibc),
# its `pip freeze` in a file (what it has is left out), more names to leave out, the folder.
WHEEL_PYTHON ?= 3.12
WHEEL_PLATFORM ?= manylinux_2_28_x86_64
WHEEL_NODE_FREEZE ?=
WHEEL_EXCLUDE ?=
WHEEL_DIR ?= logs/wheelhouse

.PHONY: install demo test test-fast bench gpu-check wheelhouse lint format ui clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install  ## train on built-in synthetic faces, logged to ./mlflow.db
	$(BIN)/python -m fer_lab.train experiment=demo

# Two test processes, slow tests first (tests/conftest.py): the long tests overlap instead of
# queueing (fresh clone here: 12-15 min, against 22 one at a time). Tests of the machine's
# PostgreSQL and SLURM all run in one of the two.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadgroup

test: install  ## the whole suite (CPU, no network, no outside files)
	$(PYTEST)

test-fast: install  ## everything but the tests marked slow
	$(PYTEST) -m "not slow"

bench: install  ## fer_lab vs a plain PyTorch loop (per step, end to end), data pipelines, load times (DEVICE=cuda on a GPU)
	$(BIN)/python -m fer_lab.bench --device $(DEVICE) $(BENCH_DATA) $(BENCH_ARGS)

gpu-check: install  ## the GPU path end to end in ~8 min on one H100/H200: logs/gpu_check/gpu_check.{json,md}
	$(BIN)/python -m fer_lab.gpu_check --device cuda $(if $(wildcard $(FER2013)),--fer2013 $(FER2013)) $(GPU_CHECK_ARGS)

wheelhouse: install  ## wheels for a GPU node without internet, less torch and what WHEEL_NODE_FREEZE lists; there: pip install --no-index --find-links $(WHEEL_DIR) fer_lab
	$(BIN)/python -m fer_lab.core.wheelhouse --python $(WHEEL_PYTHON) --platform $(WHEEL_PLATFORM) --out $(WHEEL_DIR) $(if $(WHEEL_NODE_FREEZE),--node-freeze $(WHEEL_NODE_FREEZE)) $(foreach name,$(WHEEL_EXCLUDE),--exclude $(name))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: install  ## MLflow UI on ./mlflow.db; prints each experiment's link to its runs table
	$(BIN)/python -m fer_lab.tracking.ui_view --backend-store-uri sqlite:///mlflow.db --workers 1 --host 127.0.0.1 --port 5000

clean:
	rm -rf logs mlruns .pytest_cache .ruff_cache build dist *.egg-info
