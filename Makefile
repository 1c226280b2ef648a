# The two commands a user needs: `make demo` and `make test`. Both install first.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test lint clean

setup: $(STAMP)

# Re-install only when the dependency declarations change.
# torch is pinned in the same pip call as everything else, or pip pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet -c constraints.txt "torch==2.13.0" -e ".[train,eval,dev]"
	$(PIP) check
	touch $(STAMP)

demo: setup
	$(PY) eval/distributions.py --baselines --plot results/baselines_ternary.png --csv results/baselines.csv

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check capo data_prep recipes eval bench tests

clean:
	rm -rf .venv results .pytest_cache
