# Two entry points: `make demo` and `make test`. Each creates or refreshes .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints/dev-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints/dev-cpu.txt -e '.[ros,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -ra

demo: $(STAMP)
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) demo_out
