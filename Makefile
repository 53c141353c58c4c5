# Everything a fresh Debian machine needs; each target installs what it uses.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
NOTORCH_VENV ?= /tmp/nnspec-notorch

.PHONY: setup demo test test-notorch bench docs fuzz fuzz-issue9

setup:
	@command -v dot >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq graphviz)
	$(PIP) install -q -e ".[test]"

# The main job: check every example spec, summarise two of them, then train the digits MLP
# on the NumPy interpreter (runs/digits_mlp/: weights, metrics.csv, loss.png) and evaluate it.
demo: setup
	nnspec check specs/*.nn
	nnspec summary specs/digits_mlp.nn
	nnspec summary specs/resnet18.nn --depth 2
	nnspec train specs/digits_mlp.nn --out runs/digits_mlp --force
	nnspec eval specs/digits_mlp.nn --weights runs/digits_mlp

# The whole test suite, plus the proof that a plain install without torch serves the
# commands that do not need it.
test: setup
	$(PYTHON) -m pytest
	$(MAKE) test-notorch

# The tests that run without torch: those marked `torch` skip one by one, the rest (the kernel
# gradchecks among them) run against the plain install.
NOTORCH_TESTS = tests/numpy tests/test_build.py tests/torch/test_codegen.py \
	tests/torch/test_train_script.py

test-notorch:
	rm -rf $(NOTORCH_VENV) && $(PYTHON) -m venv $(NOTORCH_VENV)
	$(NOTORCH_VENV)/bin/pip install -q . "pytest>=8" "hypothesis>=6.100"
	cd /tmp && $(NOTORCH_VENV)/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch leaked into the plain install'"
	$(NOTORCH_VENV)/bin/nnspec check specs/*.nn
	$(NOTORCH_VENV)/bin/nnspec summary specs/resnet18.nn --format json > /dev/null
	$(NOTORCH_VENV)/bin/nnspec summary specs/gpt2_small.nn > /dev/null
	$(NOTORCH_VENV)/bin/nnspec render specs/resnet18.nn -o $(NOTORCH_VENV)/resnet18.svg
	$(NOTORCH_VENV)/bin/nnspec compile specs/tiny_gpt.nn -o $(NOTORCH_VENV)/tiny_gpt.py
	$(NOTORCH_VENV)/bin/nnspec train specs/sine_huber.nn --epochs 3 --out $(NOTORCH_VENV)/run --force
	$(NOTORCH_VENV)/bin/pytest -q -p no:cacheprovider $(NOTORCH_TESTS)
	@echo "plain install without torch: ok"

# Benchmarks print ratios against PyTorch eager measured in one run.
bench: setup
	$(PYTHON) bench/bench_compile.py
	$(PYTHON) bench/bench_train.py
	$(PYTHON) bench/bench_codegen.py
	$(PYTHON) bench/bench_real.py

# Regenerate the generated parts of docs/: op tables and the diagrams of the example specs.
docs: setup
	$(PYTHON) scripts/gen_docs.py
	$(PYTHON) scripts/render_docs.py

# Fuzz check, summary, render (DOT) and compile with FUZZ_COUNT mutated and generated specs in
# 2 worker processes (10 s and 3 GiB per input), then train/eval/predict/import-weights/...
# with FUZZ_CLI_COUNT hostile command lines and damaged data files; every crasher and hang
# is saved under tests/fuzz_cases/, which the test suite replays. FUZZ_SEED reruns one
# campaign; `make fuzz-issue9` runs every case of issue 9 through the real CLI.
FUZZ_COUNT ?= 100000
FUZZ_CLI_COUNT ?= 5000
FUZZ_SEED ?=
fuzz:
	$(PYTHON) scripts/fuzz.py --count $(FUZZ_COUNT) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))
	$(PYTHON) scripts/fuzz.py --cli --count $(FUZZ_CLI_COUNT) --time-limit 20 \
		$(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

fuzz-issue9:
	$(PYTHON) scripts/fuzz_issue9.py
