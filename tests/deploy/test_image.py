"""The Dockerfile cannot be built here (no base images can be pulled), so its install
steps are a script (deploy/install.sh) that this test runs in a fresh venv; podman builds
the image only where it can (skipped otherwise, with the reason)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.support.processes import ROOT

DOCKERFILE = open(os.path.join(ROOT, "Dockerfile")).read()


def test_the_dockerfile_is_two_stages_non_root_with_healthcheck_and_stopsignal():
    stages = re.findall(r"(?m)^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", DOCKERFILE)
    assert len(stages) == 2 and stages[0][1] == "build"
    assert "COPY --from=build /opt/tollhouse /opt/tollhouse" in DOCKERFILE
    assert "RUN tollhouse-install /src /opt/tollhouse" in DOCKERFILE
    runtime = DOCKERFILE[DOCKERFILE.index(f"FROM {stages[1][0]}", DOCKERFILE.index("AS build")):]
    assert re.search(r"(?m)^USER 10001:10001$", runtime) and "gcc" not in runtime
    assert re.search(r"(?m)^HEALTHCHECK .*\n.*/healthz", runtime)
    assert re.search(r"(?m)^STOPSIGNAL SIGTERM$", runtime)
    for path in re.findall(r"(?m)^COPY (?!--from)(\S+(?: \S+)*) \S+$", DOCKERFILE):
        for source in path.split():
            assert os.path.exists(os.path.join(ROOT, source)), source


@pytest.mark.skipif(bool(os.environ.get("TOLLHOUSE_PURE_PYTHON")), reason="runs once, in the compiled pass")
def test_the_image_install_steps_work_in_a_fresh_venv(tmp_path):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler here: the image's build stage installs gcc")
    venv = tmp_path / "venv"
    out = subprocess.run(["sh", os.path.join(ROOT, "deploy", "install.sh"), ROOT, str(venv)], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    check = subprocess.run([str(venv / "bin" / "tollhouse"), "check", "-c", os.path.join(ROOT, "deploy", "gateway.yaml")],
                           capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not (venv / "bin" / "cython").exists()   # the build tool is not kept
    assert sys.executable   # the venv is independent of the test's own


def test_podman_builds_the_image_where_it_can():
    podman = shutil.which("podman") or shutil.which("buildah")
    if podman is None:
        pytest.skip("podman/buildah are not installed: the image is not built here (docs/deployment.md)")
    images = subprocess.run([podman, "images", "-q", "python:3.11-slim-bookworm"], capture_output=True, text=True)
    if not images.stdout.strip():
        pytest.skip("no local python:3.11-slim-bookworm base image and no registry to pull it from")
    out = subprocess.run([podman, "build", "-t", "tollhouse:test", ROOT], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
