# The analysis as a DAG: each target reads what the one before it wrote to disk.
# `make all` runs everything on the synthetic demo data; `make all DATA_DIR=/path/to/HAM10000`
# on real data. `make test` runs lint and the test suite. Both create .venv when missing.

PYTHON ?= python3
VENV ?= .venv
PARAMS ?= params/smoke.yaml
DATA_DIR ?=
# Extra `--set key=value` overrides for every step, e.g. SET="image_size=96 seed=7".
SET ?=
# SYSTEM_PYTHON=1 installs into the current interpreter instead of .venv (Colab: keeps
# its preinstalled GPU TensorFlow).
SYSTEM_PYTHON ?=

ifeq ($(SYSTEM_PYTHON),1)
PY := $(PYTHON)
STAMP := .system-python.installed
else
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
endif

override SETS := $(if $(DATA_DIR),--set data_dir=$(abspath $(DATA_DIR))) $(foreach s,$(SET),--set $(s))
HAM := $(PY) -m ham_utils

.PHONY: all venv data demo split cache train evaluate gradcam app mlflow-ui test lint format \
	browser bench bench-all check-recipes clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 15

venv: $(STAMP)  ## create .venv and install the requirements (once)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed, found " + sys.version'
ifneq ($(SYSTEM_PYTHON),1)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
endif
	$(PY) -m pip install --quiet -r requirements-dev.txt -e .
	touch $@

all: $(STAMP)  ## run the numbered notebooks on PARAMS into reports/ (demo data unless DATA_DIR)
	$(HAM) report --params $(PARAMS) $(SETS)

demo: $(STAMP)  ## generate the synthetic demo dataset (once) if no DATA_DIR is given
	$(if $(DATA_DIR),@echo "DATA_DIR given: no demo data needed",$(HAM) synth --params $(PARAMS) $(SETS))

split: demo  ## read and validate the data, write the lesion-aware split
	$(HAM) split --params $(PARAMS) $(SETS)

cache: split  ## decode and resize every image once into the uint8 cache
	$(HAM) cache --params $(PARAMS) $(SETS)

data: $(STAMP)  ## download HAM10000 from Kaggle into data/ham10000 (needs Kaggle credentials)
	$(HAM) download --dest data/ham10000

lint: $(STAMP)  ## ruff lint and format checks
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The suite runs on TEST_WORKERS processes, a test file each at a time (module fixtures stay
# in one process); the two longest files start first, one per worker (tests/conftest.py).
TEST_WORKERS ?= 2

test: lint browser  ## lint, then the test suite without the recipes (TEST_WORKERS=2 processes)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not recipes"

# The GPU recipes (params/b3.yaml, b4.yaml) in miniature on the CPU, mixed_bfloat16 and XLA:
# what would break a first Colab run. About 10 minutes on 2 cores; `make test` runs only the
# B3 recipe under mixed_bfloat16.
check-recipes: $(STAMP)  ## train, evaluate and Grad-CAM the B3/B4 recipes in miniature
	$(PY) -m pytest tests/test_recipes.py

# The app's browser test drives Debian's chromium; installed here when missing (needs root
# or sudo, and apt). Without it that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "no chromium and no apt-get: the browser test will be skipped"; \
	  elif [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  elif command -v sudo >/dev/null 2>&1; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "no chromium and no root: the browser test will be skipped"; fi; }

bench: $(STAMP)  ## print speed figures (cache, input stream, Lite backbones, prediction)
	$(PY) -m ham_utils.bench --params $(PARAMS) $(SETS)

bench-all: $(STAMP)  ## time every notebook of `make all` from a fresh project folder
	$(PY) -m ham_utils.bench --report --params $(PARAMS) $(SETS)

train: cache  ## train (or resume) the recipe of PARAMS; prints the run folder
	$(HAM) train --params $(PARAMS) $(SETS)

evaluate: train  ## evaluate the run of PARAMS on its test split (metrics, figures)
	$(HAM) evaluate --run "$$($(HAM) train --params $(PARAMS) $(SETS) | tail -n 1)"

gradcam: evaluate  ## Grad-CAM grids of the run's test images
	$(HAM) gradcam --run "$$($(HAM) train --params $(PARAMS) $(SETS) | tail -n 1)"

app: $(STAMP)  ## start the Streamlit app on http://localhost:8501 (uses runs/)
	$(PY) -m streamlit run app/streamlit_app.py --server.address localhost --server.port 8501

mlflow-ui: $(STAMP)  ## open the MLflow UI on http://127.0.0.1:5000
	$(PY) -m mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:  ## remove generated files (keeps .venv and downloaded data)
	rm -rf runs reports mlruns data/processed data/cache data/demo figures/*.png
