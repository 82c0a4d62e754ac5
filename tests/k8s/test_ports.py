"""The local Ray head's ports: every component gets its own, and the worker range holds none of them."""
from tests.ports import distinct_free_ports, free_port_range


def test_distinct_ports_avoid_each_other_and_the_taken_ones():
    taken = {6392, 8266}
    ports = distinct_free_ports(7, taken)
    assert len(set(ports)) == 7
    assert not taken.intersection(ports)


def test_the_worker_range_holds_no_taken_port():
    taken = set(distinct_free_ports(7, set()))
    for _ in range(20):
        lo = free_port_range(201, taken)
        assert not taken.intersection(range(lo, lo + 201))
