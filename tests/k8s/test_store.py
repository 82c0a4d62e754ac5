"""The local record of submissions ($AIMASS_HOME/submissions.json)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import stat

import pytest

from aimass.exceptions import ConflictError, NotFoundError
from aimass.orchestrator.executors.base import RunStatus, SubmissionRef, SubmissionStore


def _ref(i: int, **kw) -> SubmissionRef:
    return SubmissionRef(run_id=f"20250105-000000-{i:06d}", backend="ray", pipeline="tiny", submitted_at=1000.0 + i,
                         address="http://127.0.0.1:8265", options={"token_file": "/secrets/ray-token"}, **kw)


def _add_many(path: str, start: int, n: int) -> None:
    store = SubmissionStore(path)
    for i in range(start, start + n):
        store.add(_ref(i))


def test_round_trip_and_order(tmp_path):
    store = SubmissionStore(tmp_path / "s.json")
    store.add(_ref(1))
    store.add(_ref(2, status=RunStatus("RUNNING", details={"jobStatus": "RUNNING"})))
    assert [r.run_id for r in store.list()] == [_ref(2).run_id, _ref(1).run_id]  # newest first
    got = store.get(_ref(2).run_id)
    assert got.status.state == "RUNNING" and got.status.details == {"jobStatus": "RUNNING"}
    with pytest.raises(ConflictError):
        store.add(_ref(1))
    got.status = RunStatus("SUCCEEDED")
    store.update(got)
    assert store.get(got.run_id).status.terminal
    assert store.remove(_ref(1).run_id) and not store.remove(_ref(1).run_id)
    with pytest.raises(NotFoundError, match="aimass runs list"):
        store.get(_ref(1).run_id)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


def test_default_location_is_aimass_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path / "h"))
    assert SubmissionStore().path == (tmp_path / "h" / "submissions.json").resolve()


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "s.json")
    ctx = mp.get_context("spawn")  # never fork a process that has torch's and Ray's threads loaded
    procs = [ctx.Process(target=_add_many, args=(path, k * 100, 15)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert len(SubmissionStore(path).list()) == 45


def test_a_damaged_record_does_not_break_the_cli(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    store = SubmissionStore(path)
    assert store.list() == []
    store.add(_ref(1))
    assert json.loads(path.read_text())["submissions"]
    assert list(tmp_path.glob("s.corrupt-*"))  # the damaged file is kept for inspection
