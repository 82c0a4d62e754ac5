"""The AI Mass image, built from the Containerfile and run: as UID 1000, root filesystem read-only.

One session-scoped build (see conftest.py); every test runs commands inside it through
``Image.run`` (unshare + chroot: read-only root, tmpfs /tmp, private network and PIDs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from _image import ACCESS_KEY, CACHE, REPO, SECRET, TAG, layer_scan

pytestmark = [pytest.mark.image, pytest.mark.slow]

SIZE_GOAL = 2 * 1000**3  # the CPU variant, uncompressed


def test_config_labels_user_entrypoint(image):
    cfg = image.config
    assert cfg["User"] == "1000:1000"
    assert cfg["Entrypoint"] == ["/opt/aimass/bin/aimass-entrypoint"]
    assert cfg["Cmd"] == ["--help"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["HOME"] == "/tmp" and env["AIMASS_HOME"].startswith("/tmp/") and env["TMPDIR"] == "/tmp"
    assert env["PATH"].startswith("/opt/aimass/venv/bin:")
    labels = cfg["Labels"]
    for key in ("source", "version", "revision", "licenses", "created"):
        assert labels[f"org.opencontainers.image.{key}"], key
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert len(labels["org.opencontainers.image.revision"]) >= 7
    assert labels["io.aimass.image.variant"] == "cpu"


def test_size_within_goal(image):
    size = image.timings["size_bytes"]
    print(f"image size: {size / 1e9:.2f} GB (goal <= {SIZE_GOAL / 1e9:.0f} GB)")
    assert size <= SIZE_GOAL


def test_aimass_help_and_validate_as_uid_1000_read_only(image):
    t0 = time.monotonic()
    p = image.run(["/opt/aimass/bin/aimass-entrypoint", "--help"])
    image.timings["start_to_help_s"] = round(time.monotonic() - t0, 2)
    print(f"container start to aimass --help: {image.timings['start_to_help_s']} s")
    assert "pipeline" in p.stdout and "run" in p.stdout
    p = image.run(["aimass", "pipeline", "validate", "pipelines/quickstart.yaml"],
                  binds={"pipelines": REPO / "pipelines"})
    assert "quickstart" in p.stdout + p.stderr
    # Bad input is still reported (not a crash): a step type that does not exist.
    bad = "sed 's/type: train/type: trian/' pipelines/quickstart.yaml > bad.yaml && aimass pipeline validate bad.yaml"
    p = image.run(["sh", "-c", bad],
                  binds={"pipelines": REPO / "pipelines"}, check=False)
    assert p.returncode != 0 and "trian" in p.stdout + p.stderr


def test_imports_and_mlflow_server_with_auth(image):
    code = ("import os, ray, mlflow, torch, boto3, psycopg2, kubernetes, mlflow.server.auth, flask_wtf;"
            "assert torch.version.cuda is None, torch.version.cuda;"
            "assert ray.__version__ == '2.60.0', ray.__version__;"
            "print(os.getuid(), os.getgid(), torch.__version__, mlflow.__version__)")
    p = image.run(["python", "-c", code])
    uid, gid, torch_v, _ = p.stdout.split()
    assert (uid, gid) == ("1000", "1000") and torch_v.endswith("+cpu")
    p = image.run(["mlflow", "server", "--help"])
    assert "--app-name" in p.stdout and "basic-auth" in p.stdout


def test_read_only_root_and_no_package_managers(image):
    script = (
        "set -u; id -un; "
        "touch /opt/aimass/x 2>/dev/null && echo WROTE_OPT; touch /x 2>/dev/null && echo WROTE_ROOT; "
        "touch /tmp/ok && echo TMP_OK; "
        "for t in pip pip3 apt apt-get dpkg gcc cc make; do command -v $t >/dev/null && echo FOUND_$t; done; "
        "python -m pip --version >/dev/null 2>&1 && echo FOUND_python_pip; "
        "python -m ensurepip --version >/dev/null 2>&1 && echo FOUND_ensurepip; "
        "find / -xdev -perm /6000 -type f 2>/dev/null | sed 's/^/SETUID /'; true"
    )
    out = image.run(["sh", "-c", script]).stdout
    assert out.splitlines()[0] == "aimass"
    assert "TMP_OK" in out
    assert "WROTE" not in out, out
    assert "FOUND_" not in out, out
    assert "SETUID" not in out, out


def test_entrypoint_refuses_root_and_missing_tmp(image):
    p = image.run(["/opt/aimass/bin/aimass-entrypoint", "--help"], user="0:0", check=False)
    assert p.returncode == 77 and "refusing to run as root" in p.stderr and "runAsUser: 1000" in p.stderr
    p = image.run(["/opt/aimass/bin/aimass-entrypoint", "--help"], tmp=False, check=False)
    assert p.returncode == 73 and "/tmp is not writable" in p.stderr and "emptyDir" in p.stderr
    # Roles map to their programs (the passthrough of `ray` and a role, checked by their --help).
    p = image.run(["/opt/aimass/bin/aimass-entrypoint", "ray", "--version"])
    assert "2.60.0" in p.stdout
    p = image.run(["/opt/aimass/bin/aimass-entrypoint", "control-plane", "--help"])
    assert "--port" in p.stdout


def test_sbom_in_image_and_beside_the_build(image):
    sbom_path = image.root / "opt/aimass/sbom.cdx.json"
    out = CACHE / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sbom.cdx.json").write_bytes(sbom_path.read_bytes())
    bom = json.loads(sbom_path.read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"].startswith("1.")
    assert bom["metadata"]["component"]["name"] == "aimass"
    comps = {c["name"].lower(): c for c in bom["components"]}
    assert comps["torch"]["version"] == "2.13.0+cpu"
    assert comps["ray"]["version"] == "2.60.0"
    for name in ("mlflow", "boto3", "psycopg2-binary", "kubernetes", "flask-wtf"):
        assert name in comps, name
    assert "pip" not in comps  # removed from the environment before the SBOM
    with_licence = sum(1 for c in comps.values() if c.get("licenses"))
    print(f"SBOM: {len(comps)} components, {with_licence} with a licence")
    assert with_licence >= 0.5 * len(comps), f"{with_licence}/{len(comps)} components carry a licence"
    assert not any(n.startswith("nvidia-") for n in comps)


def test_no_secrets_in_layers(image):
    found = layer_scan(TAG, CACHE / f"oci-scan-{id(image)}", [SECRET.encode(), ACCESS_KEY.encode()])
    assert found == {SECRET: [], ACCESS_KEY: []}, found


def test_quickstart_data_and_train_on_a_ray_head_in_the_container(image, tmp_path: Path):
    spec = yaml.safe_load((REPO / "pipelines" / "quickstart.yaml").read_text())
    spec["metadata"]["name"] = "image-quickstart"
    spec["spec"]["steps"] = [s for s in spec["spec"]["steps"] if s["name"] in ("data", "train")]
    train = spec["spec"]["steps"][1]["config"]
    train.update(epochs=2, numWorkers=1)
    train.pop("earlyStopping", None)
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    (spec_dir / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    # bound into the container for UID 1000: readable whatever umask the test process runs with
    spec_dir.chmod(0o755)
    (spec_dir / "pipeline.yaml").chmod(0o644)
    script = (
        "set -e; "
        "ray start --head --port 6379 --node-ip-address 127.0.0.1 --num-cpus 4 --include-dashboard=false --disable-usage-stats >/tmp/head.log 2>&1 "
        "|| { cat /tmp/head.log; exit 1; }; "
        "aimass run spec/pipeline.yaml --ray-address 127.0.0.1:6379 -o json > /tmp/run.json; rc=$?; "
        "cat /tmp/run.json; ray stop --force >/dev/null 2>&1 || true; exit $rc"
    )
    p = image.run(["sh", "-c", script], binds={"spec": spec_dir}, timeout=600, check=False,
                  extra_env={"GLOO_SOCKET_IFNAME": "lo"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(p.stdout[p.stdout.index("{"):p.stdout.rindex("}") + 1])
    assert result["status"] == "SUCCEEDED", result
    assert {name: st["status"] for name, st in result["steps"].items()} == {"data": "SUCCEEDED", "train": "SUCCEEDED"}


def test_report_timings(image):
    # Not an assertion on speed: writes the figures docs/benchmarks.md records.
    report = {k: v for k, v in image.timings.items() if k != "build_log"}
    (CACHE / "report.json").write_text(json.dumps(report, indent=2))
    print(f"\nimage report: {json.dumps(report)}")
    assert report["build_s"] > 0
