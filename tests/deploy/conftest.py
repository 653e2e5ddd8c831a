import os
import shutil

import pytest

from tests.support.processes import ROOT

DEPLOY_VENV = os.path.join(ROOT, ".venv-deploy", "bin")


def deploy_tool(name: str) -> str:
    """kubectl (Debian's kubernetes-client), or checkov / kubernetes-validate from the
    deploy tools' venv (`make deploy-tools`, part of `make test`)."""
    path = os.path.join(DEPLOY_VENV, name)
    if os.path.exists(path):
        return path
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is missing: run 'make deploy-tools' (make test does)")
    return found


def pytest_collection_modifyitems(config, items):
    # The deployment files do not depend on how the gateway runs: checked once, in the compiled pass.
    if os.environ.get("TOLLHOUSE_PURE_PYTHON"):
        skip = pytest.mark.skip(reason="deployment files are checked once, in the compiled pass")
        for item in items:
            if "tests/deploy/" in str(item.fspath):
                item.add_marker(skip)
