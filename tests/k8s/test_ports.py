"""The local Ray head's ports: every component gets its own, and the worker range holds none of them."""
from tests.ports import distinct_free_ports, free_port_range


def test_distinct_ports_avoid_each_other_and_the_taken_ones():
    taken = {6392, 8266}
    ports = distinct_free_ports(7, taken)
    assert len(set(ports)) == 7
    assert not taken.intersection(ports)


def test_the_worker_range_skips_candidates_holding_a_taken_or_bound_port(monkeypatch):
    """The range finder is offered (through its random draw) a range holding a port given to another Ray
    component, then one holding a port some process is listening on, then a clean one: it must take the third."""
    import random
    import socket

    from tests import ports

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        bound = held.getsockname()[1]
        lo = ports._ephemeral_low()
        taken_start, bound_start = lo - 3000, bound - 100
        clean = next(s for s in range(lo - 8000, lo - 4000, 250) if all(ports._is_free(q) for q in range(s, s + 201)))
        offers = iter([taken_start, bound_start, clean])
        monkeypatch.setattr(random, "randrange", lambda a, b: next(offers))
        assert free_port_range(201, {taken_start + 150}) == clean
        assert next(offers, None) is None  # both bad candidates were looked at and refused
