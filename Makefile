# zippix: every target creates/refreshes the virtual environment it needs.
# Variables: VENV (default .venv), BOARD (bitstream/program), VERBOSE=1 (tool logs), PYTHON (default python3),
# DESIGN / PARAMS / CLK_MHZ / SYNTH_OPTS (bitstream/program: engine, its KEY=VALUE parameters, PLL clock, extra
# Yosys synth options).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.zippix-installed
BOARD  ?=
BENCH_OUT ?= results
BUILD_ARGS = $(if $(DESIGN),--engine $(DESIGN)) $(foreach p,$(PARAMS),--param $(p)) $(if $(CLK_MHZ),--clk-mhz $(CLK_MHZ)) $(if $(SYNTH_OPTS),--synth-opts '$(SYNTH_OPTS)') $(if $(VERBOSE),--verbose)

.PHONY: venv demo test sim bitstream program bench clean help icarus

help:
	@echo "make demo                   train/run the main job on simulated hardware with bundled data"
	@echo "make test                   run the whole test suite (what CI runs)"
	@echo "make sim                    run the cocotb gateware suites only"
	@echo "make bitstream BOARD=NAME   build a bitstream + JSON report into build/NAME/"
	@echo "   [DESIGN=sgd PARAMS='bits=2 bus_bits=64' CLK_MHZ=100]  engine, its parameters, PLL clock"
	@echo "   e.g. make bitstream BOARD=ulx3s-85f DESIGN=conv  (gated PixelCNN engine, its per-board defaults)"
	@echo "make program BOARD=NAME     program a board (reuses build/NAME/ if built from the same sources)"
	@echo "                            VERBOSE=1: the tools' logs while building"
	@echo "make bench                  run all benchmarks, JSON + PNG into $(BENCH_OUT)/"
	@echo "make clean                  remove build outputs (keeps the venv; 'make distclean' removes it)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[train]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) host/run.py

# Icarus Verilog runs every cocotb suite a second time as a 4-state simulation (X checks); installed
# with apt-get where that works, otherwise those runs are skipped with a note.
icarus:
	@if command -v iverilog >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq iverilog >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq iverilog >/dev/null 2>&1; } || \
	  echo "note: apt-get could not install iverilog; the Icarus runs of the cocotb suites are skipped"; \
	else echo "note: no iverilog and no apt-get; the Icarus runs of the cocotb suites are skipped"; fi

test: venv icarus
	$(PY) -m pytest -q -n auto --durations=25

sim: venv icarus
	$(PY) -m pytest -q sim

bitstream: venv
	$(PY) -m hw.build --board "$(BOARD)" $(BUILD_ARGS)

program: venv
	$(PY) -m hw.build --board "$(BOARD)" --program $(BUILD_ARGS)

bench: venv
	@mkdir -p $(BENCH_OUT)
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b --out $(BENCH_OUT); done

clean:
	rm -rf build results sim_build* .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .cache
