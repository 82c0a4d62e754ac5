"""The image test's one build: base (mmdebstrap), wheelhouse, `buildah bud`, a mounted container.

Needs root, buildah, mmdebstrap and util-linux's unshare (.ci/run installs them). Without them the
tests skip, except when AIMASS_IMAGE_TEST=require (CI), where a missing tool is a failure.
Timings and the image size go to ``$AIMASS_IMAGE_CACHE/report.json`` and the test output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _image import (
    ACCESS_KEY,
    BASE_TAG,
    CACHE,
    REPO,
    SECRET,
    TAG,
    Image,
    build_image,
    buildah_cmd,
    close_image,
    ensure_base,
    ensure_wheelhouse,
    make_context,
    open_image,
    require_tools,
    sh,
)

# Credentials "used during the build": in the build's environment and planted in its context.
PLANTED = {
    ".env": f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET}\n",
    ".netrc": f"machine pypi.internal login ci password {SECRET}\n",
    "wheelhouse/pip.conf": f"[global]\nindex-url = https://ci:{SECRET}@pypi.internal/simple\n",
    "docker/image/credentials.txt.bak": f"{SECRET}\n",
}


@pytest.fixture(scope="session")
def built() -> dict:
    """Build the base, the wheelhouse and the image once; returns timings and the build log."""
    require_tools()
    CACHE.mkdir(parents=True, exist_ok=True)
    report: dict = {"cache": str(CACHE)}
    report["base_s"] = round(ensure_base(), 1)
    wheelhouse, report["wheelhouse_s"] = ensure_wheelhouse()
    report["wheelhouse_s"] = round(report["wheelhouse_s"], 1)
    context = CACHE / f"context-{os.getpid()}"
    make_context(context, wheelhouse, PLANTED)
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=False, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET,
               PIP_INDEX_URL=f"https://ci:{SECRET}@pypi.internal/simple")
    t0 = time.monotonic()
    p = build_image(context, TAG, base=BASE_TAG, env=env,
                    build_args={"VERSION": "0.1.0", "REVISION": revision, "CREATED": "2026-01-01T00:00:00Z"})
    report["build_s"] = round(time.monotonic() - t0, 1)
    sh(["rm", "-rf", str(context)], check=False)
    sh(buildah_cmd("rmi", "--prune"), check=False)  # the previous run's image, now untagged
    if p.returncode != 0:
        pytest.fail(f"buildah bud failed ({p.returncode}):\n{p.stdout[-6000:]}\n{p.stderr[-3000:]}")
    # Uncompressed size: the layers of the image's manifest (vfs stores them as plain tars).
    info = json.loads(sh(buildah_cmd("inspect", "--type", "image", TAG)).stdout)
    report["size_bytes"] = sum(layer["size"] for layer in json.loads(info["Manifest"])["layers"])
    report["build_log"] = p.stdout[-3000:]
    (CACHE / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "build_log"}, indent=2))
    print(f"\nimage test: {json.dumps({k: v for k, v in report.items() if k != 'build_log'})}")
    return report


@pytest.fixture(scope="session")
def image(built) -> Image:
    """The built image's root filesystem, mounted; removed after the session."""
    img = open_image(TAG)
    img.timings = built
    yield img
    close_image(img)
