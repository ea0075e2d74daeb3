# The two commands of the README: `make demo` (the main job) and `make test`. Both install first.
# torch is pinned to the machine's CPU build through constraints.txt, so nothing here upgrades it.
PYTHON ?= python
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt
DEMO_DIR ?= runs/demo

.PHONY: install demo test test-all bench clean

install:
	$(PIP) torch==2.13.0
	$(PIP) -e ".[all]"

demo: install
	$(PYTHON) -m edifice train flow_matching --data moons --steps 3000 --out $(DEMO_DIR) --threads 1
	@echo "wrote: $$(ls $(DEMO_DIR))"

test: install
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q

test-all: install
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q --runslow

bench: install
	$(PYTHON) benchmarks/run_all.py

clean:
	rm -rf runs build *.egg-info .pytest_cache
