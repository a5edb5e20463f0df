# cvzoo: `make demo` runs the main job on the embedded default, `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the x86_64 wheels on this machine's disk (see DEVELOPERS notes in README).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# The real mmpretrain and PaddleClas, each in its own venv (PaddleClas pins numpy 1.24), for tests/test_sources.py.
SOURCE_ENVS ?= .venv-sources
SOURCES := paddleclas mmpretrain

.PHONY: demo test venv source-envs clean bench

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

$(SOURCE_ENVS)/%/.installed: tests/sources/requirements-%.txt
	rm -rf $(SOURCE_ENVS)/$*
	$(PY) -m venv $(SOURCE_ENVS)/$*
	$(SOURCE_ENVS)/$*/bin/pip install -q --upgrade pip
	$(SOURCE_ENVS)/$*/bin/pip install -q -r $<
	touch $@

source-envs: $(foreach s,$(SOURCES),$(SOURCE_ENVS)/$(s)/.installed)

demo: venv
	$(BIN)/python -m cvzoo demo

test: venv source-envs
	$(BIN)/python -m pytest -q -ra --timeout=1800 --durations=20 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(SOURCE_ENVS) build *.egg-info .pytest_cache demo-out
