# SpaceNit: `make demo` runs the whole pipeline on synthetic data; `make test` runs the tests.
# Both create .venv and install what they need first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch goes in first, on its own: a bare `torch` requirement would pull a multi-GB CUDA
# build. Override for a GPU machine, e.g. `make install TORCH_SPEC="torch==2.13.0 --index-url ..."`.
TORCH_SPEC ?= torch==2.13.0
INSTALLED := $(VENV)/.installed
DEMO_DIR ?= demo-output

SHARED_DATA ?= ../shared/data

.PHONY: install demo test lint compile compile-check manifests clean bench image-test

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	rm -rf $(DEMO_DIR)
	$(PY) -m spacenit.conversion.synthetic $(DEMO_DIR)/geotiffs --num-samples 64 --tile-size-px 48 --num-dates 3
	$(PY) -m pipelines.spacenit_pipeline compile --output $(DEMO_DIR)/spacenit_pipeline.yaml
	$(PY) -m pipelines.spacenit_pipeline run-local --input-dir $(DEMO_DIR)/geotiffs \
		--pipeline-root $(DEMO_DIR)/pipeline-root --tracking-uri sqlite:///$(abspath $(DEMO_DIR))/mlflow.db \
		--tile-size-px 48 --steps 80 --global-batch-size 16 \
		--set data.min_patch_size=8 --set data.max_patch_size=8
	@echo "MLflow store: $(DEMO_DIR)/mlflow.db (browse: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(DEMO_DIR))/mlflow.db)"
	@echo "compiled pipeline: $(DEMO_DIR)/spacenit_pipeline.yaml"

lint: $(INSTALLED)
	$(VENV)/bin/ruff check spacenit components pipelines tests benchmarks

test: $(INSTALLED) lint
	$(VENV)/bin/pytest -q --timeout 900

compile: $(INSTALLED)
	$(PY) -m pipelines.spacenit_pipeline compile --output pipelines/spacenit_pipeline.yaml

# Fails when pipelines/spacenit_pipeline.yaml is not what the code compiles to (`make test` checks it too).
compile-check: $(INSTALLED)
	$(PY) -m pipelines.spacenit_pipeline compile --output $(DEMO_DIR)/compile-check/spacenit_pipeline.yaml
	diff -u pipelines/spacenit_pipeline.yaml $(DEMO_DIR)/compile-check/spacenit_pipeline.yaml

# Render every Kustomize overlay (needs kubectl; tests/test_manifests.py renders them without it).
manifests:
	for o in manifests/overlays/*/; do echo "# $$o"; kubectl kustomize $$o || exit 1; done

# Build the CPU image (images/build.sh: podman, buildah or docker), then run convert, stats,
# pretrain, embed, probe and the MLflow server inside it with --network none, on
# $(SHARED_DATA). Slow (~40 min on 2 cores): not part of `make test`. Offline:
# BASE_IMAGE=localhost/spacenit-base:bookworm WHEELS=DIR make image-test (images/README.md).
image-test: $(INSTALLED)
	PYTHON=$(abspath $(PY)) images/image-test.sh $(SHARED_DATA)

bench: $(INSTALLED)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
