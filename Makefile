# One command each: `make demo` (main job on the embedded dataset), `make test`, `make bench`.
# Each creates .venv and installs the package into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m floatify train --model resnet18 --dataset digits --out runs/demo --overwrite \
		--eval-attacks strong --eval-steps 20 --eot-draws 5 --eval-limit 200

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider tests floatify --doctest-modules

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
