"""LocalCopies: the colocated model copies of an ingress replica (background loads, retries, drops)."""

from __future__ import annotations

import threading
import time

import pytest

from aimass.serving.colocate import LocalCopies


def wait_for(pred, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


class FlakyLoader:
    """Fails the first ``fails`` loads of each key (an int, or key -> int), then returns a fresh object per load."""

    def __init__(self, fails: int | dict = 0, gate: threading.Event | None = None) -> None:
        self.fails, self.gate = fails, gate
        self.calls: list = []
        self.at: list[float] = []

    def __call__(self, key):
        self.calls.append(key)
        self.at.append(time.monotonic())
        if self.gate is not None:
            self.gate.wait(5)
        fails = self.fails.get(key, 0) if isinstance(self.fails, dict) else self.fails
        if self.calls.count(key) <= fails:
            raise OSError(f"artifact store unreachable for {key}")
        return {"model": key}


def test_a_wanted_copy_loads_in_the_background_and_is_then_served():
    gate = threading.Event()
    copies = LocalCopies(FlakyLoader(gate=gate))
    copies.want({("m", "1")})
    assert copies.get(("m", "1")) is None and copies.status(("m", "1"))["state"] == "loading"  # the caller falls back meanwhile
    gate.set()
    wait_for(lambda: copies.get(("m", "1")) is not None)
    assert copies.get(("m", "1")) == {"model": ("m", "1")} and copies.status(("m", "1")) == {"state": "loaded"}


def test_a_failed_load_is_retried_with_backoff_until_it_loads():
    loader = FlakyLoader(fails=2)
    copies = LocalCopies(loader, retry_s=0.05, max_retry_s=1.0)
    copies.want({("m", "1")})
    wait_for(lambda: copies.status(("m", "1"))["state"] == "failed")
    st = copies.status(("m", "1"))
    assert st["attempts"] == 1 and "artifact store unreachable" in st["error"] and st["retry_in_s"] <= 0.05
    wait_for(lambda: copies.get(("m", "1")) is not None)
    assert len(loader.calls) == 3
    gap1, gap2 = loader.at[1] - loader.at[0], loader.at[2] - loader.at[1]
    assert gap1 >= 0.045 and gap2 >= 0.095  # 0.05 s, then doubled
    assert copies.status(("m", "1")) == {"state": "loaded"}


def test_the_backoff_is_capped():
    loader = FlakyLoader(fails=100)
    copies = LocalCopies(loader, retry_s=0.02, max_retry_s=0.04)
    copies.want({("m", "1")})
    wait_for(lambda: len(loader.calls) >= 5, 5)
    copies.close()
    gaps = [b - a for a, b in zip(loader.at, loader.at[1:], strict=False)]
    assert max(gaps) < 0.04 + 0.5 and gaps[-1] >= 0.035  # doubles up to the cap, then stays there


def test_copies_no_route_wants_are_dropped_and_their_retries_stop():
    loader = FlakyLoader(fails={("good", "1"): 1, ("bad", "1"): 100})
    copies = LocalCopies(loader, retry_s=0.2)
    copies.want({("good", "1"), ("bad", "1")})
    wait_for(lambda: copies.get(("good", "1")) is None and copies.status(("bad", "1"))["state"] == "failed"
             and copies.status(("good", "1"))["state"] == "failed")
    wait_for(lambda: copies.get(("good", "1")) is not None, 3)  # retried
    dropped = copies.want({("bad", "2")})  # a rollout: neither is wanted any more
    assert dropped == {("good", "1")} and copies.get(("good", "1")) is None
    n = len([k for k in loader.calls if k == ("bad", "1")])
    time.sleep(0.5)
    assert len([k for k in loader.calls if k == ("bad", "1")]) == n  # no retry of a retired version
    assert copies.status(("bad", "1"))["state"] == "absent"
    wait_for(lambda: copies.get(("bad", "2")) is not None, 3)


def test_a_copy_retired_while_it_loads_is_not_kept():
    gate = threading.Event()
    copies = LocalCopies(FlakyLoader(gate=gate))
    copies.want({("m", "1")})
    copies.want({("m", "2")})
    gate.set()
    wait_for(lambda: copies.get(("m", "2")) is not None)
    time.sleep(0.05)
    assert copies.get(("m", "1")) is None and copies.status(("m", "1"))["state"] == "absent"


@pytest.mark.parametrize("repeat", [2])
def test_wanting_the_same_copies_again_starts_no_second_load(repeat):
    loader = FlakyLoader()
    copies = LocalCopies(loader)
    for _ in range(repeat):
        copies.want({("m", "1")})
    wait_for(lambda: copies.get(("m", "1")) is not None)
    copies.want({("m", "1")})
    time.sleep(0.05)
    assert loader.calls == [("m", "1")]
