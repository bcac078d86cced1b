# make install | train ARGS="impl=scratch" | test | bench | lint | format | tensorboard | dashboard DB=... | mlflow | clean
PYTHON ?= python3
PLUGINS := plugins/hydra_optuna_pruning_sweeper plugins/fashion_mnist_fused_launcher
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
ARGS ?=
DB ?= logs/optuna.db
MLFLOW_UI := $(VENV)/.mlflow-ui-stamp

.PHONY: install train test bench lint format tensorboard dashboard mlflow clean

install: $(STAMP)

# The project and its two Hydra plugins, editable. Reinstalls whenever a pyproject.toml or the constraints
# change. torch and torchvision are installed together from the registry so that they are one build.
$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS)) constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,tracking]" $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

train: install
	$(BIN)/python train.py $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

# Side-by-side epoch timings; writes benchmarks/results/bench.{json,md}. ARGS="--help" for the options.
bench: install
	$(BIN)/python benchmarks/bench.py $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

tensorboard: install
	$(BIN)/tensorboard --logdir logs --host 127.0.0.1

# the Optuna dashboard of a study's sqlite file: make dashboard DB=logs/optuna.db
dashboard: install
	$(BIN)/optuna-dashboard sqlite:///$(DB) --host 127.0.0.1

# the MLflow UI of logs/mlflow.db (logger=mlflow); its first use installs the UI, the mlflow package (about 550 MB).
# One worker; no usage data sent (MLFLOW_DISABLE_TELEMETRY=false sends it), no job runners (they serve MLflow's GenAI
# features, which no run here uses), and not the deprecation its web stack warns of in every worker.
mlflow: $(MLFLOW_UI)
	MLFLOW_DISABLE_TELEMETRY=$${MLFLOW_DISABLE_TELEMETRY:-true} MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
	PYTHONWARNINGS="ignore:starlette.middleware.wsgi is deprecated" \
	$(BIN)/mlflow ui --workers 1 --backend-store-uri sqlite:///$(abspath logs/mlflow.db) --host 127.0.0.1

$(MLFLOW_UI): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,tracking,mlflow-ui]" $(addprefix -e ,$(PLUGINS))
	touch $(MLFLOW_UI)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
