#!/usr/bin/env python3
"""The AI Mass image's entrypoint: one image, every role.

    docker run IMAGE                          # aimass --help
    docker run IMAGE pipeline validate p.yaml # any aimass command (the first word is not a program below)
    docker run IMAGE ray-head [RAY START ARGS] # Ray head: ray start --head --block (dashboard on 0.0.0.0)
    docker run IMAGE ray-worker HOST:6379 [..] # Ray worker: ray start --address HOST:6379 --block
    docker run IMAGE control-plane [..]        # aimass api serve --host 0.0.0.0 --port 8080
    docker run IMAGE mlflow-server [..]        # mlflow server --host 0.0.0.0 --port 5000
    docker run IMAGE submit [..]               # RayJob submitter: ray job submit ...
    docker run IMAGE ray|mlflow|aimass|python|bash|sh|/path ...   # run that program as given

Kubernetes objects (the chart, KubeRay) set `command:` and bypass this file; the image's USER (1000),
HOME=/tmp and PATH make those commands work the same way.

It refuses to run as root (UID 0): the chart runs every pod as UID 1000 with runAsNonRoot, and the
image is built for that. AIMASS_ALLOW_ROOT=1 lifts the refusal for debugging only.
"""
from __future__ import annotations

import os
import sys

VENV_BIN = "/opt/aimass/venv/bin"
PROGRAMS = {"aimass", "ray", "mlflow", "serve", "python", "python3", "python3.11", "bash", "sh", "env", "id"}
ROLES = {
    "ray-head": ["ray", "start", "--head", "--block", "--dashboard-host=0.0.0.0", "--disable-usage-stats"],
    "ray-worker": ["ray", "start", "--block", "--disable-usage-stats", "--address"],
    "control-plane": ["aimass", "api", "serve", "--host", "0.0.0.0", "--port", "8080"],
    "mlflow-server": ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"],
    "submit": ["ray", "job", "submit"],
}


def fail(message: str, fix: str, code: int = 64) -> int:
    """Print a one-screen error (what, and how to fix it) and return the exit code."""
    print(f"aimass image: {message}\n  fix: {fix}", file=sys.stderr)
    return code


def command_for(argv: list[str]) -> list[str]:
    """The argv to exec for the entrypoint's arguments (see the module docs)."""
    if not argv:
        return ["aimass", "--help"]
    first, rest = argv[0], argv[1:]
    if first in ROLES:
        return ROLES[first] + rest
    if first in PROGRAMS or "/" in first:
        return argv
    return ["aimass", *argv]


def main(argv: list[str]) -> int:
    """Check the user and /tmp, then exec the role's command."""
    if os.getuid() == 0 and os.environ.get("AIMASS_ALLOW_ROOT") != "1":
        return fail("refusing to run as root (UID 0); this image runs as UID 1000 and the chart forbids root "
                    "(runAsNonRoot: true, runAsUser: 1000)",
                    "run as the image's user (drop `--user root` / `-u 0`; Kubernetes: runAsUser: 1000). "
                    "For debugging only: -e AIMASS_ALLOW_ROOT=1.", code=77)
    tmp = os.environ.get("TMPDIR", "/tmp")
    if not os.access(tmp, os.W_OK | os.X_OK):
        return fail(f"{tmp} is not writable by UID {os.getuid()}; aimass, Ray and MLflow write only there",
                    f"mount a writable volume at {tmp} (docker run --tmpfs {tmp}; Kubernetes: an emptyDir at {tmp}, "
                    "as the chart does).", code=73)
    cmd = command_for(argv)
    if cmd[0] == "ray" and argv and argv[0] == "ray-worker" and len(argv) < 2:
        return fail("ray-worker needs the head's address", "docker run IMAGE ray-worker HEAD_HOST:6379")
    exe = cmd[0] if "/" in cmd[0] else os.path.join(VENV_BIN, cmd[0])
    if not os.path.exists(exe):
        exe = cmd[0]  # bash, sh, env, id: from PATH
    try:
        os.execvp(exe, cmd)
    except OSError as e:
        return fail(f"cannot run {cmd[0]!r}: {e.strerror}", "pass an aimass command, a role "
                    f"({', '.join(sorted(ROLES))}) or one of: {', '.join(sorted(PROGRAMS))}", code=127)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
