"""Build and run the AI Mass image without a Docker daemon: mmdebstrap + buildah (vfs, chroot).

Everything heavy is cached under ``AIMASS_IMAGE_CACHE`` (default ``/var/tmp/aimass-image-cache``):
the bookworm base tarball (rebuilt after 7 days), the CPU wheelhouse (kept while pyproject.toml and
the constraints do not change) and buildah's storage. Each run rebuilds the image itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("AIMASS_IMAGE_CACHE", "/var/tmp/aimass-image-cache"))
BASE_TAG = "localhost/aimass-test-base:bookworm"
BASE_MAX_AGE_S = 7 * 86400
# Debian bookworm minbase + Python 3.11, slimmed as debian:bookworm-slim (the official Python slim
# image's own base) is: no man pages, docs (copyright files kept) or translations.
MMDEBSTRAP = ("--variant=minbase", "--include=python3.11,python3.11-venv,ca-certificates",
              "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
              "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
              "--dpkgopt=path-exclude=/usr/share/info/*")
TAG = "localhost/aimass:image-test"
# Test credentials, fresh per session: the layer scan must not find them anywhere in the image.
SECRET = f"aimass-image-test-secret-{uuid.uuid4().hex}"
ACCESS_KEY = "AKIA" + uuid.uuid4().hex[:16].upper()
TOOLS = ("buildah", "mmdebstrap", "unshare", "chroot", "mount")


def missing_tools() -> list[str]:
    """Host programs the image test needs and does not find (it also needs root)."""
    return [t for t in TOOLS if shutil.which(t) is None]


def require_tools() -> None:
    """Skip (or, with AIMASS_IMAGE_TEST=require as in CI, fail) when root or a tool is missing."""
    import pytest

    why = []
    if os.geteuid() != 0:
        why.append("root (mount namespaces, chroot)")
    why += missing_tools()
    if why:
        msg = "image test needs: " + ", ".join(why) + " (apt-get install -y buildah mmdebstrap util-linux)"
        if os.environ.get("AIMASS_IMAGE_TEST") == "require":
            pytest.fail(msg)
        pytest.skip(msg)


def buildah_cmd(*args: str) -> list[str]:
    """A buildah command line on the test's own storage (vfs driver, under CACHE)."""
    return ["buildah", "--root", str(CACHE / "storage"), "--runroot", str(CACHE / "runroot"),
            "--storage-driver", "vfs", *args]


def sh(cmd: list[str], *, timeout: float = 900, env: dict[str, str] | None = None,
       check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a host command, capturing output; on failure raise with its tail."""
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} -> {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def ensure_base() -> float:
    """The local bookworm + python3.11 base image; returns seconds spent (0 when cached)."""
    t0 = time.monotonic()
    base_dir = CACHE / "base"
    key = hashlib.sha256(" ".join(MMDEBSTRAP).encode()).hexdigest()[:12]
    tar = base_dir / f"rootfs-{key}.tar"
    new = base_dir / f"rootfs-{key}.new.tar"  # mmdebstrap picks the format from the extension
    fresh = tar.exists() and time.time() - tar.stat().st_mtime < BASE_MAX_AGE_S
    have_image = sh(buildah_cmd("inspect", "--type", "image", BASE_TAG), check=False).returncode == 0
    if fresh and have_image:
        return 0.0
    base_dir.mkdir(parents=True, exist_ok=True)
    if not fresh:
        for old in base_dir.glob("rootfs*.tar"):
            old.unlink()
        sh(["mmdebstrap", *MMDEBSTRAP, "bookworm", str(new)], timeout=900)
        os.replace(new, tar)
    (base_dir / "Containerfile").write_text(f'FROM scratch\nADD {tar.name} /\nCMD ["/usr/bin/python3.11"]\n')
    sh(buildah_cmd("bud", "--isolation", "chroot", "-q", "-t", BASE_TAG, "-f", str(base_dir / "Containerfile"),
                   str(base_dir)))
    return time.monotonic() - t0


def ensure_wheelhouse() -> tuple[Path, float]:
    """The CPU wheelhouse built by the project's own script (reused while its inputs are unchanged)."""
    t0 = time.monotonic()
    out = CACHE / "wheelhouse-cpu"
    env = dict(os.environ, PYTHON=os.environ.get("AIMASS_IMAGE_PYTHON", _python()))
    sh(["bash", str(REPO / "docker" / "build-wheelhouse.sh"), "--variant", "cpu", "--out", str(out)],
       env=env, timeout=1200)
    return out, time.monotonic() - t0


def _python() -> str:
    import sys

    return sys.executable


def make_context(dest: Path, wheelhouse: Path, planted: dict[str, str]) -> None:
    """A build context like the repository's: its files, the wheelhouse (hard links), and planted
    credential files that the .containerignore allowlist must keep out of the build."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("Containerfile", "pyproject.toml", ".containerignore"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "docker", dest / "docker")
    try:
        shutil.copytree(wheelhouse, dest / "wheelhouse", copy_function=os.link)
    except OSError:  # another filesystem: copy
        shutil.rmtree(dest / "wheelhouse", ignore_errors=True)
        shutil.copytree(wheelhouse, dest / "wheelhouse")
    for rel, text in planted.items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@dataclass
class Image:
    """A built image, one working container of it, and its root filesystem mounted on the host."""

    tag: str
    container: str
    root: Path
    config: dict
    env: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, argv: list[str], *, user: str = "1000:1000", tmp: bool = True, timeout: float = 300,
            binds: dict[str, Path] | None = None, extra_env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run argv in the image as ``user``, root filesystem READ-ONLY, a tmpfs on /tmp (unless
        ``tmp`` is False), private network/PID/IPC namespaces (every process dies with the call),
        the image's environment only. ``binds`` mounts host paths read-only under /tmp."""
        binds = binds or {}
        lines = [
            "set -e",
            'R="$1"; shift',
            "mount --make-rprivate /",
            "ip link set lo up 2>/dev/null || true",
            "hostname localhost",
            # What a container runtime provides: /etc/hosts (in the working container, not the image).
            '[ -s "$R/etc/hosts" ] || printf "127.0.0.1 localhost\\n::1 localhost\\n" > "$R/etc/hosts"',
            'mount --bind "$R" "$R"',
            'mount -o remount,bind,ro "$R"',
            'mount -t proc proc "$R/proc"',
            'mount --rbind /dev "$R/dev"',
            'mount -t tmpfs -o size=2g,mode=1777 tmpfs "$R/dev/shm"',
            'mount --rbind /sys "$R/sys"',
        ]
        if tmp:
            lines.append('mount -t tmpfs -o size=4g,mode=1777 tmpfs "$R/tmp"')
            for name, host in binds.items():
                lines.append(f'mkdir -p "$R/tmp/{name}" && mount --bind {shlex.quote(str(host))} "$R/tmp/{name}"'
                             f' && mount -o remount,bind,ro "$R/tmp/{name}"')
        env = list(self.env) + [f"{k}={v}" for k, v in (extra_env or {}).items()]
        lines.append(f'exec chroot --userspec={user} "$R" /usr/bin/env -i ' + " ".join(shlex.quote(e) for e in env)
                     + ' sh -c \'cd /tmp && exec "$@"\' sh "$@"')
        cmd = ["unshare", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "sh", "-c", "\n".join(lines),
               "sh", str(self.root), *argv]
        return sh(cmd, timeout=timeout, check=check)


def build_image(context: Path, tag: str, *, base: str, build_args: dict[str, str] | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``buildah bud`` of the Containerfile in ``context`` (no layer cache: a real rebuild)."""
    args = ["bud", "--isolation", "chroot", "--layers=false", "--force-rm", "-f", str(context / "Containerfile"),
            "--build-arg", f"BASE={base}", "-t", tag]
    for k, v in (build_args or {}).items():
        args += ["--build-arg", f"{k}={v}"]
    return sh(buildah_cmd(*args, str(context)), timeout=1800, env=env, check=False)


def open_image(tag: str) -> Image:
    """A working container of ``tag`` with its root filesystem mounted."""
    info = json.loads(sh(buildah_cmd("inspect", "--type", "image", tag)).stdout)
    config = info["OCIv1"]["config"]
    name = sh(buildah_cmd("from", "--pull-never", tag)).stdout.strip().splitlines()[-1]
    root = Path(sh(buildah_cmd("mount", name)).stdout.strip())
    return Image(tag=tag, container=name, root=root, config=config, env=config.get("Env", []))


def close_image(img: Image) -> None:
    """Remove the working container (and its copy of the layers)."""
    sh(buildah_cmd("umount", img.container), check=False)
    sh(buildah_cmd("rm", img.container), check=False)


def layer_scan(tag: str, dest: Path, needles: list[bytes]) -> dict[str, list[str]]:
    """Push ``tag`` to an OCI layout (uncompressed), then read every layer tarball and the config:
    returns {needle: [where it was found]}."""
    if dest.exists():
        shutil.rmtree(dest)
    sh(buildah_cmd("push", "--disable-compression", tag, f"oci:{dest}"), timeout=900)
    index = json.loads((dest / "index.json").read_text())
    blobs = dest / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    found: dict[str, list[str]] = {n.decode(): [] for n in needles}
    config_blob = (blobs / manifest["config"]["digest"].split(":")[1]).read_bytes()
    for n in needles:
        if n in config_blob:
            found[n.decode()].append("image config (history, env, labels)")
    overlap = max(len(n) for n in needles)
    grep = ["grep", "-a", "-q", "-F"] + [a for n in needles for a in ("-e", n.decode())]
    for layer in manifest["layers"]:
        path = blobs / layer["digest"].split(":")[1]
        # Uncompressed tars hold names and contents verbatim: grep is the fast first pass, the
        # tar walk (which names the files) runs only on a hit.
        if sh([*grep, str(path)], check=False).returncode == 1:
            continue
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                for n in needles:
                    if n in member.name.encode():
                        found[n.decode()].append(f"{layer['digest'][:19]}:{member.name} (name)")
                if not member.isfile():
                    continue
                f = tf.extractfile(member)
                prev = b""
                while chunk := f.read(1 << 20):
                    buf = prev + chunk
                    for n in needles:
                        if n in buf:
                            found[n.decode()].append(f"{layer['digest'][:19]}:{member.name}")
                    prev = buf[-overlap:]
    shutil.rmtree(dest, ignore_errors=True)
    return {k: sorted(set(v)) for k, v in found.items()}
