#!/bin/sh
# Install Tollhouse into a virtual environment, compiled: the image's build stage runs this,
# and tests/deploy/test_image.py runs it in a fresh venv (the image itself cannot be built here).
#   usage: deploy/install.sh SOURCE_DIR VENV_DIR
set -eu
src=${1:?source directory}
venv=${2:?virtual environment to create}
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --quiet --upgrade pip
# Cython is needed to compile the core; it is not kept in the runtime image.
"$venv/bin/pip" install --no-cache-dir --quiet "Cython==3.3.1" setuptools wheel
# A regular (not editable) install: setup.py compiles the modules with a .pxd beside them.
"$venv/bin/pip" install --no-cache-dir --quiet --no-build-isolation "$src"
"$venv/bin/pip" uninstall --quiet --yes Cython
"$venv/bin/python" -c "import tollhouse, sys; sys.exit(0 if tollhouse.is_compiled() else 'the core did not compile')"
