# zippix: every target creates/refreshes the virtual environment it needs.
# Variables: VENV (default .venv), BOARD (bitstream/program), PYTHON (host interpreter, default python3),
# DESIGN / PARAMS / CLK_MHZ (bitstream: engine, its KEY=VALUE parameters, PLL clock; the sgd design defaults below).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.zippix-installed
BOARD  ?=
BENCH_OUT ?= results

.PHONY: venv demo test sim bitstream program bench clean help

help:
	@echo "make demo                   train/run the main job on simulated hardware with bundled data"
	@echo "make test                   run the whole test suite (what CI runs)"
	@echo "make sim                    run the cocotb gateware suites only"
	@echo "make bitstream BOARD=NAME   build a bitstream + JSON report into build/NAME/"
	@echo "   [DESIGN=sgd PARAMS='bits=2 bus_bits=64' CLK_MHZ=100]  engine, its parameters, PLL clock"
	@echo "make program BOARD=NAME     build and program a board"
	@echo "make bench                  run all benchmarks, JSON + PNG into $(BENCH_OUT)/"
	@echo "make clean                  remove build outputs (keeps the venv; 'make distclean' removes it)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[train]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) host/run.py

test: venv
	$(PY) -m pytest -q

sim: venv
	$(PY) -m pytest -q sim

bitstream: venv
	$(PY) -m hw.build --board "$(BOARD)" $(if $(DESIGN),--engine $(DESIGN)) $(foreach p,$(PARAMS),--param $(p)) $(if $(CLK_MHZ),--clk-mhz $(CLK_MHZ))

program: venv
	$(PY) -m hw.build --board "$(BOARD)" --program

bench: venv
	@mkdir -p $(BENCH_OUT)
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b --out $(BENCH_OUT); done

clean:
	rm -rf build results sim_build* .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .cache
