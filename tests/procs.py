"""Finding and ending exactly the processes a test owns.

A test may only signal processes of its own cluster: those whose command line names the cluster's
private temp dir or home (the raylet, GCS, dashboard, `ray start --block`), and their descendants
(Ray's workers rename themselves ``ray::...`` and no longer name the temp dir, but they are children
of the cluster's raylet). A process that merely looks like a Ray worker, or that listens on a port the
test meant to use, is somebody else's and is left alone.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["proc_table", "owned_pids", "cluster_workers", "kill_owned"]


def proc_table() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process we can read."""
    out: dict[int, tuple[int, list[str]]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        # Ray workers set their title with setproctitle: one argv entry holding spaces
        out[int(d)] = (ppid, argv)
    return out


def owned_pids(markers: list[str], table: dict[int, tuple[int, list[str]]] | None = None) -> set[int]:
    """Processes whose command line names one of ``markers`` (a private dir), and all their descendants.

    ``markers`` must be private paths (a temp dir, a home made by mkdtemp): never a port or a program
    name, which other people's processes share.
    """
    markers = [m for m in markers if m]
    if not markers:
        return set()
    table = proc_table() if table is None else table
    me = os.getpid()
    owned = {pid for pid, (_, argv) in table.items() if pid != me and any(m in a for a in argv for m in markers)}
    grown = True
    while grown:
        grown = False
        for pid, (ppid, _) in table.items():
            if ppid in owned and pid not in owned and pid != me:
                owned.add(pid)
                grown = True
    return owned


def cluster_workers(markers: list[str], title_prefix: str) -> list[int]:
    """PIDs of the cluster's own worker processes titled ``title_prefix`` (e.g. ``ray::RayTrainWorker``)."""
    table = proc_table()
    owned = owned_pids(markers, table)
    return sorted(pid for pid in owned if table[pid][1] and table[pid][1][0].startswith(title_prefix))


def kill_owned(markers: list[str], sig: int = signal.SIGKILL) -> list[int]:
    """Signal every process :func:`owned_pids` finds; returns their pids."""
    pids = sorted(owned_pids(markers))
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    return pids
