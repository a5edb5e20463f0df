# cvzoo: `make demo` runs the main job on the embedded default, `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the x86_64 wheels on this machine's disk (see DEVELOPERS notes in README).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# one pytest-xdist worker per CPU this process may use; tests/conftest.py pins each worker to its own
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
# The real mmpretrain and PaddleClas, each in its own venv (PaddleClas pins numpy 1.24), for tests/test_sources.py.
SOURCE_ENVS ?= .venv-sources
SOURCES := paddleclas mmpretrain
# uv runs the installs, under pip's configuration (tools/venv_install.py; pip where uv cannot be had): a clean
# clone's three venvs in a fraction of pip's time. `.venv` and the PaddleClas venv install side by side
# (mmpretrain waits for `.venv`)
UV_HOME ?= .uv
UV := $(UV_HOME)/bin/uv
INSTALL = $(PY) tools/venv_install.py
MAKEFLAGS += -j2

.PHONY: demo test test-fast venv source-envs clean gpu-kit

$(UV):
	$(PY) -m venv $(UV_HOME)
	-$(UV_HOME)/bin/pip install -q "uv>=0.5"

$(BIN)/activate:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate $(UV)
	$(INSTALL) $(VENV) $(UV) -- -q $(TORCH_PINS)
	$(INSTALL) $(VENV) $(UV) -- -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

$(SOURCE_ENVS)/%/.installed: tests/sources/requirements-%.txt | $(UV)
	rm -rf $(SOURCE_ENVS)/$*
	$(PY) -m venv $(SOURCE_ENVS)/$*
	$(INSTALL) $(SOURCE_ENVS)/$* $(UV) -- -q -r $<
	touch $@

# mmpretrain runs on the torch of $(VENV), seen through a .pth after its own packages: the same pinned wheels, not a
# second 5 GB install (half of a clean clone's setup time)
$(SOURCE_ENVS)/mmpretrain/.installed: tests/sources/requirements-mmpretrain.txt $(VENV)/.installed | $(UV)
	rm -rf $(SOURCE_ENVS)/mmpretrain
	$(PY) -m venv $(SOURCE_ENVS)/mmpretrain
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(SOURCE_ENVS)/mmpretrain/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/cvzoo-venv.pth"
	$(INSTALL) $(SOURCE_ENVS)/mmpretrain $(UV) -- -q -r $<
	touch $@

source-envs: $(foreach s,$(SOURCES),$(SOURCE_ENVS)/$(s)/.installed)

demo: venv
	$(BIN)/python -m cvzoo demo

test: venv source-envs
	$(BIN)/python -m pytest -q -ra --timeout=1800 --durations=20 -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The inner loop: unit and synthetic tests, no ../shared data, no source venvs, no zoo-wide export matrix.
test-fast: venv
	$(BIN)/python -m pytest -q -ra --timeout=600 --durations=10 -n $(TEST_WORKERS) --dist loadgroup \
		-m "not slow and not shared and not zoo" $(PYTEST_ARGS)

# What benchmarks/gpu_session.sh needs on the device machine, whose image has torch, timm, onnx and
# onnxruntime but not these: wheels for its Python 3.12 (pins: the versions the tests pass with here), and
# the trained fixture its test loads. Carried there as .gpu (ignored by git).
GPU_KIT_WHEELS ?= pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
	onnxslim==0.1.98 onnxconverter-common==1.16.0 thop==0.1.1.post2209072238
GPU_KIT_FIXTURES ?= ese_vovnet19b_dw-imagenette112.safetensors

gpu-kit:
	rm -rf .gpu && mkdir -p .gpu/wheels .gpu/fixtures
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .gpu/wheels $(GPU_KIT_WHEELS)
	cp $(addprefix ../shared/data/fixtures/,$(GPU_KIT_FIXTURES)) .gpu/fixtures/
	du -sh .gpu

clean:
	rm -rf $(VENV) $(SOURCE_ENVS) $(UV_HOME) build *.egg-info .pytest_cache demo-out
