# Two entry points: `make demo` (set up, distil the built-in teacher, evaluate it beside the teacher quantized to
# 8 and 4 bits) and `make test`.
# torch is installed first from the pinned CPU build; a bare `torch` requirement would pull CUDA.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
TORCH    ?= torch==2.13.0
STAMP    := $(VENV)/.slimlm-installed
DEMO_OUT ?= runs/demo
# precision: auto = bf16 only where the CPU/GPU runs it natively (an AVX2-only CPU emulates bf16 ~7x slower)
PRECISION ?= auto
# the demo's training time budget: the plan is fitted to it as the steps are timed, so `make demo` stays within
# 30 minutes on Intel Sapphire Rapids, AMD Zen 4 and AMD Zen 3 (measured: docs/demo.md)
MAX_TIME ?= 14m
# the demo's training text: speeches and Wikipedia in equal shares, chosen by `slimlm experiment data-mix`
# (docs/data.md): at the same budget it keeps more of the teacher over both kinds of text than either alone
DEMO_DATA ?= sotu,wikipedia
EXP_OUT  ?= runs/exp

.PHONY: setup demo test lint bench experiments clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/slimlm fetch
	$(BIN)/slimlm student --teacher smollm2-135m --data sotu --layers 14 --precision $(PRECISION) \
		--out $(DEMO_OUT)/student-init --force
	$(BIN)/slimlm distill --teacher smollm2-135m --student $(DEMO_OUT)/student-init --data $(DEMO_DATA) \
		--max-tokens 200000 --max-time $(MAX_TIME) --learning-rate 6e-4 --precision $(PRECISION) \
		--out $(DEMO_OUT)/student --force
	$(BIN)/slimlm quantize smollm2-135m --bits 8 --eval-tokens 2048 --out $(DEMO_OUT)/teacher-int8 --force
	$(BIN)/slimlm quantize smollm2-135m --bits 4 --granularity group --group-size 32 --eval-tokens 2048 \
		--out $(DEMO_OUT)/teacher-int4 --force
	$(BIN)/slimlm eval smollm2-135m $(DEMO_OUT)/teacher-int8 $(DEMO_OUT)/teacher-int4 $(DEMO_OUT)/student \
		--data sotu --general-tokens 8192 --repeats 5 --out $(DEMO_OUT)/eval.json --force

# ruff lint and format check (config in pyproject.toml); `make test` runs it first
lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

test: setup lint
	$(BIN)/slimlm fetch
	$(BIN)/python -m pytest -q --durations=15

# The paper's studies, the student-shape frontier, the data-mix study and the pipeline with their defaults (2-3 seeds
# each; hours on a 2-core CPU).
# Rerunning continues where an interrupted run stopped. Reports: $(EXP_OUT)/*/report.html
experiments: setup
	$(BIN)/slimlm fetch
	$(BIN)/slimlm experiment temperature --max-tokens 100000 --online-control --out $(EXP_OUT)/temperature
	$(BIN)/slimlm experiment temperature --values 2,5,10 --cache-mode online --max-tokens 102400 --baselines none \
		--student $(EXP_OUT)/temperature/student-init --out $(EXP_OUT)/temperature-online
	$(BIN)/slimlm pipeline recipes/pipeline.yaml --out $(EXP_OUT)/pipeline
	$(BIN)/slimlm experiment finetune --with-teacher --lr-grid 0.2,1,5 --max-tokens 102400 --baselines none \
		--model $(EXP_OUT)/temperature-online/arms/t2-seed0 --out $(EXP_OUT)/finetune
	$(BIN)/slimlm experiment feature-layer --weight-grid 0.1,1,10 --max-tokens 102400 --baselines none \
		--student $(EXP_OUT)/temperature/student-init --out $(EXP_OUT)/feature-layer
	$(BIN)/slimlm experiment student-shape --out $(EXP_OUT)/student-shape
	$(BIN)/slimlm experiment data-mix --seeds 0,1 --out $(EXP_OUT)/data-mix

bench: setup
	$(BIN)/python bench/distill_bench.py

clean:
	rm -rf $(VENV) runs
