# Two commands for users: `make demo` (the main job) and `make test`. Both build .venv from the
# pinned requirements/lock.txt on first use; delete .venv to rebuild. `make test` also builds .venv-compat
# (requirements/compat.txt: the transformers 4.x stack exports are checked on).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LIBTPU_STAMP := .libtpu/.installed
COMPAT_VENV := .venv-compat
COMPAT_STAMP := $(COMPAT_VENV)/.installed
TEST_WORKERS ?= 2

.PHONY: demo test bench venv clean libtpu compat

venv: $(STAMP)

$(STAMP): requirements/lock.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' 2>/dev/null || { echo "error: $(PYTHON) is not a working Python 3.11 or 3.12 (set PYTHON=python3.12 or PYTHON=/path/to/python)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo --fresh

test: $(STAMP) $(LIBTPU_STAMP) $(COMPAT_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30 tests

bench: $(STAMP)
	$(PY) benchmarks/suite.py --json bench.json

# libtpu for ahead-of-time compiles for a TPU slice (python -m launch.compile_for), kept out of .venv
# (requirements/libtpu.txt says why); launch.compile_for and its tests find it in .libtpu/ (make test installs it).
libtpu: $(LIBTPU_STAMP)

$(LIBTPU_STAMP): requirements/libtpu.txt $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target .libtpu -r requirements/libtpu.txt
	touch $(LIBTPU_STAMP)

# The older stack an export must load on (transformers 4.44, tokenizers 0.19, sentence-transformers 3.4:
# requirements/compat.txt), in its own venv; tests/test_export_compat.py runs it (make test builds it).
compat: $(COMPAT_STAMP)

$(COMPAT_STAMP): requirements/compat.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' 2>/dev/null || { echo "error: $(PYTHON) is not a working Python 3.11 or 3.12 (set PYTHON=python3.12 or PYTHON=/path/to/python)"; exit 1; }
	rm -rf $(COMPAT_VENV)
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --no-deps -r requirements/compat.txt
	$(COMPAT_VENV)/bin/python -m pip check
	touch $(COMPAT_STAMP)

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .libtpu .pytest_cache
