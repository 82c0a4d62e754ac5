"""Free loopback ports for the servers the tests start (one helper for every test package)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port", "distinct_free_ports", "free_port_range"]


def free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def distinct_free_ports(n: int, taken: set[int]) -> list[int]:
    """`n` free ports, different from each other and from `taken` (two bind(0) calls can return the same one)."""
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in taken and p not in out:
            out.append(p)
    return out


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_range(width: int, taken: set[int]) -> int:
    """The first port of `width` consecutive free ports that hold none of `taken`.

    Ray refuses to start when its worker-port range holds a port given to another component
    (seen in CI: node_manager 44893 inside workers 44845-45045). The other components' ports come
    from bind(0), i.e. from the ephemeral range, so the range is looked for below it first.
    """
    eph = _ephemeral_low()
    lo = max(10000, eph - 12000)
    hi = eph if eph - width > lo else 65000  # no room below the ephemeral range: look anywhere
    for _ in range(500):
        start = random.randrange(lo, hi - width)
        ports = range(start, start + width)
        if not taken.intersection(ports) and all(_is_free(q) for q in ports):
            return start
    raise RuntimeError(f"no {width} consecutive free ports between {lo} and {hi} apart from {sorted(taken)}")
