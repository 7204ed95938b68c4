"""`free_ports` picks ports that no outgoing connection can take before their owner binds them:
outside the kernel's ephemeral range, distinct, and bindable."""

import socket

from asyncrl.protocol import sockets
from asyncrl.protocol.sockets import free_ports


def test_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    low, high = sockets._ephemeral_range()
    ports = free_ports(8)
    assert len(set(ports)) == 8
    # Linux's default range (32768-60999) leaves 20000-32767 and 61000-65535 outside it.
    assert all(not (low <= p <= high) for p in ports), (ports, low, high)
    assert all(p >= sockets.PICK_RANGE_FLOOR for p in ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_is_skipped(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # The busy port comes first among the candidates; the next one is chosen instead.
        spare = free_ports(2)
        monkeypatch.setattr(sockets, "_pick_candidates", lambda n: [busy, *spare])
        assert free_ports(1) == [spare[0]]


def test_no_room_outside_the_range_lets_the_kernel_pick(monkeypatch):
    # A range covering every port above the floor leaves no candidate: the kernel picks.
    monkeypatch.setattr(sockets, "_ephemeral_range", lambda: (1024, 65535))
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(1024 <= p <= 65535 for p in ports)
