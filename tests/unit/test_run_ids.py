"""One run-id rule and one generator, and one vocabulary of run states, for local runs and every backend."""

from __future__ import annotations

import pytest

from aimass.exceptions import InvalidRequestError
from aimass.orchestrator import state
from aimass.orchestrator.executors import base


def test_backends_use_the_one_rule_generator_and_states():
    assert base.check_run_id is state.check_run_id and base.new_run_id is state.new_run_id
    assert base.RUN_ID_PATTERN == state.RUN_ID_PATTERN
    assert (base.PENDING, base.RUNNING, base.SUCCEEDED, base.FAILED, base.CANCELLED, base.UNKNOWN) == (
        state.PENDING, state.RUNNING, state.SUCCEEDED, state.FAILED, state.CANCELLED, state.UNKNOWN)
    assert base.TERMINAL_STATES is state.TERMINAL_STATES


@pytest.mark.parametrize("rid", ["Not_Valid", "UPPER", "-lead", "trail-", "a" * 41, "", "x/../y"])
def test_a_run_id_that_could_not_be_submitted_is_refused_locally_too(rid, tmp_path):
    from aimass.storage import get_store

    with pytest.raises(InvalidRequestError, match="invalid run id"):
        state.check_run_id(rid)
    with pytest.raises(InvalidRequestError, match="invalid run id"):
        state.load_state(get_store(str(tmp_path)), rid)


def test_generated_ids_pass_the_rule_and_are_unique():
    ids = [state.new_run_id() for _ in range(20)]
    assert all(state.check_run_id(i) == i for i in ids)
    assert len(set(ids)) == 20
