# AI Mass developer commands. `make quickstart` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
AIMASS := $(VENV)/bin/aimass
PYTEST_ARGS ?=

.PHONY: setup quickstart test test-fast bench lint clean down wheelhouse image

setup: $(VENV)/.installed

# pip 23 backtracks for minutes on this stack: upgrade pip first, then install against the lock.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

# A real pipeline end to end on the embedded default (local Ray, MLflow on SQLite, local artifacts),
# ending with a prediction from the model it served.
quickstart: setup
	$(AIMASS) run pipelines/quickstart.yaml
	$(AIMASS) predict digits --input @pipelines/examples/digits-request.json

# pytest exits 5 when it collected no tests: that is a failure here, never a silent pass.
test: setup
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff's rules and the ones left out (with why) are in pyproject.toml; CI runs this before the tests.
lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) benchmarks/train_overhead.py
	$(PY) benchmarks/orchestration.py

# The container image (docs/install.md, "Build the image"). BUILDER=buildah for daemonless builds.
IMAGE ?= ghcr.io/aimass/aimass:0.1.0
BUILDER ?= docker
VARIANT ?= cpu
wheelhouse: setup
	PYTHON=$(PY) docker/build-wheelhouse.sh --variant $(VARIANT)

image: wheelhouse
	$(BUILDER) build -f Containerfile -t $(IMAGE) --build-arg VARIANT=$(VARIANT) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .

down:
	-$(AIMASS) down

clean: down
	rm -rf $(VENV) .pytest_cache .tools
