# Set-up, tests, training and serving. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= artifacts/digits
CONFIG ?= training/configs/digits.yaml

.PHONY: install test test-random train serve console-screenshots bench-env bench-load bench-swap bench-serve bench-train-speed mutation alerts docker-wheels docker-smoke fuzz soak soak-open clean protos

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[serve,train,test,onnx-cpu]'
	touch $@

test: install
	$(PY) -m pytest

# The suite in a shuffled order (pytest-randomly; SEED=N repeats an order, as printed at the top).
test-random: install
	$(PY) -m pytest -p randomly $(if $(SEED),--randomly-seed=$(SEED))

# Mutation testing ([tool.mutmut] in pyproject.toml: the gate, heads, hybrid model, preprocessing,
# the service's encoding and runtime, the trainer's calibration). Not part of `make test`: about
# 40 minutes on 2 cores. Survivors: $(VENV)/bin/mutmut results; one: $(VENV)/bin/mutmut show NAME.
mutation: install
	$(PY) -m pip install --quiet mutmut==3.8.1
	rm -rf mutants
	$(VENV)/bin/mutmut run

# The live service fuzzed: the project's own fuzzer (10,000 requests) and schemathesis (bench/fuzz.py).
fuzz: train
	$(PY) -m pip install --quiet schemathesis==4.32.5
	$(PY) -m bench.fuzz --model-dir $(MODEL_DIR) --cases 10000

# Overload for 5 minutes with wrk, then check nothing was lost (bench/soak.py).
soak: train
	@command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 1; }
	$(PY) -m bench.soak --model-dir $(MODEL_DIR) --minutes 5

# Open loop: 1x, 2x and 4x the measured capacity for 2 minutes each, every answer checked (bench/soak_open.py).
soak-open: train
	@command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 1; }
	$(PY) -m bench.soak_open --model-dir $(MODEL_DIR) --write

# Prometheus alert rules (docker/alerts.yml) checked and unit-tested (docker/alerts.test.yml).
alerts:
	@command -v promtool >/dev/null || { echo "promtool is needed: apt-get install prometheus"; exit 1; }
	cd docker && promtool check rules alerts.yml && promtool test rules alerts.test.yml

# The wheelhouse the CPU images install from (docker/wheels/README.md): every wheel, CPU torch included.
docker-wheels:
	$(PYTHON) -m pip download --quiet --dest docker/wheels --only-binary=:all: --python-version 3.11 '.[serve,train,onnx-cpu]' setuptools wheel

# Build the images and run the compose stack end to end on this machine (docker/smoke.py).
docker-smoke: install docker-wheels
	$(PY) docker/smoke.py

train: install
	@if [ -e $(MODEL_DIR) ]; then echo "$(MODEL_DIR) exists: not retraining (delete it to retrain)"; \
	else $(PY) -m training train --config $(CONFIG) --out $(MODEL_DIR) --onnx; fi

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache mutants

HOST ?= 127.0.0.1
PORT ?= 8000

# The main command: set up, train the default model if there is none, serve it on $(PORT).
serve: train
	$(PY) -m service --model-dir $(MODEL_DIR) --host $(HOST) --port $(PORT)

# The console's screenshots (1280x800, 390x844) and first-load time, in headless Chromium: docs/console.md.
console-screenshots: train
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { echo "Chromium is needed: apt-get install chromium chromium-driver"; exit 1; }
	$(PY) -m bench.console --model-dir $(MODEL_DIR) --write

# Benchmarks (each prints a table and updates its section of docs/benchmarks.md). The peers they
# compare against live in their own environments: .venv-bench (bench/requirements.txt) and
# .venv-mlserver (bench/requirements-mlserver.txt).
bench-env:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet -r bench/requirements.txt
	test -x .venv-mlserver/bin/python || $(PYTHON) -m venv .venv-mlserver
	.venv-mlserver/bin/python -m pip install --quiet -r bench/requirements-mlserver.txt

bench-load: train
	$(PY) -m bench.serve_load --model-dir $(MODEL_DIR) --write

# Hot swaps under load: versions alternate between the default model and one trained with another seed.
bench-swap: train
	@command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 1; }
	@test -e artifacts/digits-seed1 || $(PY) -m training train --config $(CONFIG) --set seed=1 --onnx --out artifacts/digits-seed1
	$(PY) -m bench.swap --checkpoint $(MODEL_DIR) --other artifacts/digits-seed1 --write

bench-serve: bench-env
	@command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 1; }
	@command -v h2load >/dev/null || { echo "h2load is needed: apt-get install nghttp2-client"; exit 1; }
	.venv-bench/bin/python -m bench.serve --write

bench-train-speed: bench-env
	.venv-bench/bin/python -m bench.train_speed --compile --write

# The gRPC protocol's descriptor set, compiled from service/protos/inference.proto (vendored: the
# service then needs only protobuf at run time, not grpcio-tools; tests/test_grpc.py checks it is current).
protos: install
	$(PY) -m grpc_tools.protoc -I service/protos --descriptor_set_out=service/protos/inference.binpb service/protos/inference.proto
