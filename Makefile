# The README's two commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test stress bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	@# Bytecode now, as a wheel install has it: an editable install leaves it to the first
	@# run, which cannot write it where PYTHONDONTWRITEBYTECODE is set (then every start-up
	@# compiles about 50 modules again, 76 ms of a 430 ms start on a 2-core Xeon).
	$(BIN)/python -m compileall -q src
	touch $(STAMP)

demo: install
	$(BIN)/python -m imagespace.demo

test: install
	$(BIN)/python -m pytest -q -m "not slow" tests

# The long fault, fuzz and load tests (marked slow): SIGKILL loops, long fuzzing, serving load.
stress: install
	$(BIN)/python -m pytest -q -m slow tests

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .imagespace build src/*.egg-info
