# The README's two commands are `make run` and `make test`; both create .venv/ and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/default
# Images per modality for the default dataset that `make run` builds.
DATA_COUNT ?= 500

# The default MedCLM model: phantom data, the tiny preset's curriculum, evaluation through vLLM, export.
MEDCLM_DATA ?= data/medclm
MEDCLM_RUN ?= runs/medclm-default
# Images per modality: 4,000 phantoms in all; more images beat more passes over fewer (docs/medclm.md).
MEDCLM_COUNT ?= 2000
# The long CPU preset (docs/medclm.md, run #21): 20,000 phantoms, 1 h 36 min of training on run #21's machine (about
# twice that where the CPU runs at half its speed, runs #22-#24), 13.7 GiB; not exported, so the served default stays
# the tiny preset's. Its test split holds the default data's test images.
MEDCLM_LONG_DATA ?= data/medclm-10k
MEDCLM_LONG_COUNT ?= 10000
MEDCLM_LONG_RUN ?= runs/medclm-long

.PHONY: install run test data clean-data medclm-default medclm-long bench

$(STAMP): pyproject.toml scripts/setup_env.sh scripts/torchvision_cpu_shim.py scripts/constraints-cpu.txt
	PYTHON=$(PYTHON) bash scripts/setup_env.sh
	touch $(STAMP)

install: $(STAMP)

$(DATA)/stats.json: | $(STAMP)
	$(PY) -m training.data build --source phantom --modality ct,cxr --count $(DATA_COUNT) --seed 1 --out $(DATA)

data: $(DATA)/stats.json

# The service on the built-in defaults: the committed models in model_repository/ (rebuilt first if missing).
HOST ?= 127.0.0.1
HTTP_PORT ?= 8000
GRPC_PORT ?= 50051

model_repository/organ_seg_ct/1/model.onnx: | $(STAMP)
	$(PY) -m training.segmenter build-defaults

model_repository/medclm/1/model.json: | $(STAMP)
	$(MAKE) medclm-default

run: $(STAMP) model_repository/organ_seg_ct/1/model.onnx model_repository/medclm/1/model.json
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} HF_HUB_OFFLINE=1 \
		$(PY) -m service --host $(HOST) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

test: $(STAMP)
	$(PY) -m pytest -q

medclm-default: $(STAMP)
	$(PY) -m training.data build --source phantom --modality ct,cxr --count $(MEDCLM_COUNT) --seed 1 --out $(MEDCLM_DATA)
	$(PY) -m training.medclm train --data $(MEDCLM_DATA) --out $(MEDCLM_RUN)
	$(PY) -m training.medclm evaluate --checkpoint $(MEDCLM_RUN)/04-hard --data $(MEDCLM_DATA) --split test \
		--out $(MEDCLM_RUN)/evaluation
	$(PY) -m training.medclm export --checkpoint $(MEDCLM_RUN)/04-hard --model-repository model_repository \
		--precision fp32 --evaluation $(MEDCLM_RUN)/evaluation.json
	$(PY) -m training.medclm export --checkpoint $(MEDCLM_RUN)/04-hard --model-repository model_repository \
		--precision int8 --evaluation $(MEDCLM_RUN)/evaluation.json

medclm-long: $(STAMP)
	$(PY) -m training.data build --source phantom --modality ct,cxr --count $(MEDCLM_LONG_COUNT) --seed 1 --out $(MEDCLM_LONG_DATA)
	$(PY) -m training.medclm train --preset long --data $(MEDCLM_LONG_DATA) --out $(MEDCLM_LONG_RUN)
	$(PY) -m training.medclm evaluate --checkpoint $(MEDCLM_LONG_RUN)/04-hard --data $(MEDCLM_LONG_DATA) \
		--split test --out $(MEDCLM_LONG_RUN)/evaluation

# docs/BENCHMARKS.md: the service vs the bare engines, precision variants, scaling (~30-45 min on 2 cores, on an
# otherwise idle machine). Sizes and durations: BENCH_ARGS="--vqa_requests=64 --seg_duration=20" or "--quick".
BENCH_ARGS ?=

bench: $(STAMP) model_repository/organ_seg_ct/1/model.onnx
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} HF_HUB_OFFLINE=1 $(PY) -m loadtests.bench $(BENCH_ARGS)

clean-data:
	rm -rf $(DATA)
