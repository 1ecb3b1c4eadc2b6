# Two commands do everything on a machine with only python3:  make demo  and  make test.  make  alone lists all.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum setup.py | cut -d' ' -f1)

# Dataflow: make image IMAGE=REGION-docker.pkg.dev/PROJECT/REPO/alexlabel-gpu:TAG
#           make submit-dataflow PROJECT=... BUCKET=gs://... INPUT='gs://.../**' CHECKPOINT=gs://.../model.pt IMAGE=...
IMAGE      ?= alexlabel-gpu:latest
REGION     ?= us-central1
GPU_TYPE   ?= nvidia-l4
OUTPUT     ?= $(BUCKET)/alexlabel-out

.PHONY: help install demo test lint clean image submit-dataflow dataflow-dry-run

help:  ## list the targets and what each does (what `make` alone does)
	@echo "make TARGET, one of:"
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_-]+:[^=]*## / {printf "  %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)  ## create the virtualenv if missing and install the package with its test tools

demo: install  ## sample data -> train on CPU -> label with Beam -> query summary
	$(BIN)/alexlabel demo

test: install browser  ## lint, then the whole suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

.PHONY: browser bench bench-query bench-parquet bench-review bench-embeddings bench-slices bench-audit bench-curation \
	bench-startup bench-train bench-gpu label-studio test-integration
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

LS_VENV := .venv-label-studio

label-studio: $(LS_VENV)/migrated/label_studio.sqlite3  ## Label Studio 1.23 in its own virtualenv, its database migrated once

$(LS_VENV)/bin/label-studio:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --disable-pip-version-check -q "label-studio==1.23.*"

# Its database with every migration applied, made once: a server started on a copy is up in ~10 s, not ~80.
$(LS_VENV)/migrated/label_studio.sqlite3: $(LS_VENV)/bin/label-studio
	rm -rf $(LS_VENV)/migrating $(LS_VENV)/migrated
	LABEL_STUDIO_BASE_DATA_DIR=$(abspath $(LS_VENV))/migrating LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false SENTRY_DSN= \
		$(LS_VENV)/bin/django-admin migrate -v 0 --no-color --settings=label_studio.core.settings.label_studio \
		--pythonpath="$$($(LS_VENV)/bin/python -c 'import label_studio, os; print(os.path.dirname(label_studio.__file__))')"
	mv $(LS_VENV)/migrating $(LS_VENV)/migrated

test-integration: install label-studio  ## the tests against real outside tools: a Label Studio server, both ways
	$(BIN)/python -m pytest -m integration tests/test_label_studio.py

browser:  ## Debian's chromium, which the report test renders pages in (once; needs root or sudo)
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

bench: install bench-query bench-parquet bench-review bench-embeddings bench-slices bench-audit bench-curation bench-feed  ## bench-query to bench-feed below, then labeling speed as whole processes beside the references and the bound, start-up, scaling, memory, bf16 vs fp32
	$(BIN)/python benchmarks/bench_label.py --images $(or $(IMAGES),2500) --workdir bench-out \
		--scaling $(or $(SCALING),1000 10000) $(BENCH_ARGS)
	test -f alexlabel-demo/model/model.pt || $(BIN)/alexlabel demo
	$(BIN)/python benchmarks/bench_precision.py alexlabel-demo/model/model.pt alexlabel-demo/data

bench-startup: install  ## the fixed start of `alexlabel label`: 10 images beside 1,000, five rounds (target: 3 s)
	$(BIN)/python benchmarks/bench_label.py --startup-only --images 1000 --rounds 5 --workdir bench-out $(BENCH_ARGS)

bench-feed: install  ## the GPU feed ceiling without a GPU: the real job with a free model, CPU decode and --gpu-decode, images/s per core
	$(BIN)/python benchmarks/bench_feed.py --workdir bench-out $(FEED_ARGS)

bench-int8: install  ## --precision int8 beside bf16 and fp32 on this CPU: the forward in turns, one-time cost, memory, top-1 vs fp32 on the demo checkpoint; then the labeling job end to end with each
	test -f alexlabel-demo/model/model.pt || $(BIN)/alexlabel demo
	$(BIN)/python benchmarks/bench_int8.py --checkpoint alexlabel-demo/model/model.pt --data alexlabel-demo/data $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_int8_job.py --workdir bench-out

bench-query: install  ## time query --summary and --review 100 over 1 million label rows (target: 2 s each)
	$(BIN)/python benchmarks/query_bench.py

bench-parquet: install  ## size per million label rows by Parquet codec, and labeling speed uncompressed vs zstd
	$(BIN)/python benchmarks/bench_parquet.py --workdir bench-out $(BENCH_ARGS)

bench-review: install  ## the review app over 1 million label rows: time to open the queue, decision round trips
	$(BIN)/python benchmarks/bench_review.py --workdir bench-out

bench-embeddings: install  ## labeling speed with --embeddings and --probabilities beside without, and their tables' size per million images
	$(BIN)/python benchmarks/bench_embeddings.py --images $(or $(IMAGES),2000) --workdir bench-out $(BENCH_ARGS)

bench-slices: install  ## labeling in one run beside --commit-every slices of 500: what committing in slices costs
	$(BIN)/python benchmarks/bench_slices.py --images $(or $(IMAGES),2000) --workdir bench-out $(BENCH_ARGS)

bench-audit: install  ## the audit's neighbour pass over 1 million embeddings: time, memory, near-duplicate recall, exact search beside it (BENCH_ARGS="--n 100000")
	$(BIN)/python benchmarks/bench_audit.py --workdir bench-out $(BENCH_ARGS)

bench-curation: install  ## the audit's quality on ground truth it builds: near-duplicates, label errors, outliers (CURATION_ARGS="--n 200")
	test -f alexlabel-demo/model/model.pt || $(BIN)/alexlabel demo
	$(BIN)/python benchmarks/bench_curation.py --checkpoint alexlabel-demo/model/model.pt $(CURATION_ARGS)

bench-gpu: install  ## on a GPU: decode + infer beside infer alone, end to end with and without --gpu-decode
	$(BIN)/python benchmarks/bench_gpu.py --images $(or $(IMAGES),5000) --workdir bench-out $(BENCH_ARGS)

bench-train: install  ## training loader images/s, loose files vs shards, local disk vs GCS emulator + 20 ms (LOADER_ARGS="--rounds 1"); then alexnet training images/s, synthetic vs JPEG, eager vs compiled (those rows on a GPU only)
	$(BIN)/python benchmarks/bench_loader.py --workdir bench-out $(LOADER_ARGS)
	$(BIN)/python benchmarks/bench_train.py $(BENCH_ARGS)

lint: install  ## ruff check, without the tests
	$(BIN)/ruff check .

clean:  ## remove the demo output, pytest's cache and the build files (not .venv)
	rm -rf alexlabel-demo .pytest_cache build *.egg-info

image:  ## build and push the Dataflow GPU worker image (needs a Docker engine)
	docker build -f Dockerfile.gpu -t $(IMAGE) .
	docker push $(IMAGE)

DATAFLOW_ARGS = --input '$(INPUT)' --checkpoint $(CHECKPOINT) --output $(OUTPUT) --runner DataflowRunner \
	--project $(PROJECT) --region $(REGION) --temp-location $(BUCKET)/tmp --device cuda --gpu-type $(GPU_TYPE) \
	--container-image $(IMAGE)

dataflow-dry-run: install  ## resolve options and translate the Dataflow job without submitting it
	$(BIN)/alexlabel label $(DATAFLOW_ARGS) --dry-run

submit-dataflow: install  ## label a bucket on Dataflow GPU workers
	$(BIN)/alexlabel label $(DATAFLOW_ARGS)
