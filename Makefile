# One command each: `make demo` (main job on the embedded dataset), `make test`, `make bench`, `make docs`.
# Each creates .venv and installs the package into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench docs clean

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

# The docs extra, installed by itself (its list read from the installed package's metadata): pip cannot resolve
# '.[docs]' together with floatify, because torchattacks pins requests~=2.25.1 (it never imports requests) and
# mkdocs-material needs a newer one; --no-warn-conflicts keeps pip from reporting that one conflict.
$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -c "from importlib.metadata import requires; print('\\n'.join(r.split(';')[0] for r in requires('floatify') if 'extra == \"docs\"' in r))" \
		| xargs $(PY) -m pip install -q --no-warn-conflicts
	touch $@

# The site in site/, from docs/ and the docstrings; warnings are errors. NO_MKDOCS_2_WARNING: no banner about
# Material's successor.
docs: $(VENV)/.docs-installed
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs
