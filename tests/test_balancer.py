"""Unit tests for the load balancers, on fake loop objects."""

from __future__ import annotations

import zlib
from collections import Counter
from types import SimpleNamespace

import pytest

from netreactor.server.balancer import make_balancer
from netreactor.options import LOAD_BALANCERS


def fake_loops(n, **counts):
    return [SimpleNamespace(name=f"loop{i}", conn_count=0, handed=0, adopted=0, **counts) for i in range(n)]


@pytest.mark.parametrize("name", LOAD_BALANCERS)
def test_every_option_value_has_a_policy(name):
    loops = fake_loops(3)
    pick = make_balancer(name, loops)
    assert pick(("127.0.0.1", 1234)) in loops


@pytest.mark.parametrize("name", LOAD_BALANCERS)
def test_single_loop_always_picked(name):
    loops = fake_loops(1)
    pick = make_balancer(name, loops)
    assert all(pick(("10.0.0.%d" % i, i)) is loops[0] for i in range(20))


# ---------------------------------------------------------------- round-robin

@pytest.mark.parametrize("n", [2, 3, 5])
def test_round_robin_cycles(n):
    loops = fake_loops(n)
    pick = make_balancer("round-robin", loops)
    picked = [pick(("127.0.0.1", 1000 + i)) for i in range(4 * n + 1)]
    assert picked == (loops * 5)[: 4 * n + 1]


def test_round_robin_ignores_load_and_address():
    loops = fake_loops(2)
    loops[0].conn_count = 1000
    pick = make_balancer("round-robin", loops)
    assert [pick(("1.1.1.1", 1)) for _ in range(4)] == [loops[0], loops[1], loops[0], loops[1]]


def test_balancers_are_independent():
    loops = fake_loops(3)
    p1 = make_balancer("round-robin", loops)
    p2 = make_balancer("round-robin", loops)
    assert p1(None) is loops[0] and p1(None) is loops[1]
    assert p2(None) is loops[0]


# ---------------------------------------------------------------- least-connections

def load(lp):
    return lp.conn_count + lp.handed - lp.adopted


@pytest.mark.parametrize(
    "state, expected",
    [
        ([(5, 0, 0), (1, 4, 0), (2, 3, 3)], 2),   # loads 5, 5, 2
        ([(0, 3, 0), (2, 0, 0), (1, 5, 5)], 2),   # loads 3, 2, 1: adopted ones are not counted twice
        ([(4, 0, 0), (0, 4, 0), (3, 0, 0)], 2),   # handed-but-not-adopted counts as load
        ([(1, 0, 0), (1, 0, 0), (1, 0, 0)], 0),   # a tie goes to the first
        ([(9, 2, 2), (3, 1, 1), (3, 1, 0)], 1),
    ],
)
def test_least_connections_picks_fewest(state, expected):
    loops = fake_loops(len(state))
    for lp, (c, h, a) in zip(loops, state):
        lp.conn_count, lp.handed, lp.adopted = c, h, a
    pick = make_balancer("least-connections", loops)
    chosen = pick(("127.0.0.1", 1))
    assert chosen is loops[expected]
    assert load(chosen) == min(load(lp) for lp in loops)


def test_least_connections_reads_counts_at_pick_time():
    loops = fake_loops(2)
    pick = make_balancer("least-connections", loops)
    assert pick(None) is loops[0]
    loops[0].conn_count = 3
    assert pick(None) is loops[1]
    loops[1].handed = 10
    assert pick(None) is loops[0]


def test_least_connections_spreads_a_burst():
    """A burst of hand-offs (not adopted yet) spreads evenly instead of piling on one loop."""
    loops = fake_loops(4)
    loops[2].conn_count = 2
    pick = make_balancer("least-connections", loops)
    for _ in range(22):
        pick(None).handed += 1
    assert [load(lp) for lp in loops] == [6, 6, 6, 6]
    # adoption moves a connection from "handed" to "owned": the load does not change
    for lp in loops:
        lp.adopted += lp.handed
        lp.conn_count += lp.handed
    assert [load(lp) for lp in loops] == [6, 6, 6, 6]
    loops[3].conn_count -= 3  # three connections closed there
    assert pick(None) is loops[3]


# ---------------------------------------------------------------- source-addr-hash

def test_source_hash_stable_across_ports():
    loops = fake_loops(4)
    pick = make_balancer("source-addr-hash", loops)
    for host in ["127.0.0.1", "10.1.2.3", "192.168.0.77", "::1", "2001:db8::5"]:
        chosen = {id(pick((host, port))) for port in (1, 80, 4242, 50000, 65535)}
        assert len(chosen) == 1, host
        assert pick((host, 9)) is loops[zlib.crc32(host.encode()) % 4]


def test_source_hash_ipv6_four_tuple_uses_host():
    loops = fake_loops(3)
    pick = make_balancer("source-addr-hash", loops)
    assert pick(("2001:db8::1", 1234, 0, 0)) is pick(("2001:db8::1", 9999, 0, 0)) \
        is loops[zlib.crc32(b"2001:db8::1") % 3]


def test_source_hash_is_deterministic_across_instances():
    a = make_balancer("source-addr-hash", fake_loops(5))
    b_loops = fake_loops(5)
    b = make_balancer("source-addr-hash", b_loops)
    for i in range(50):
        host = f"172.16.{i}.{i * 3 % 256}"
        assert a((host, 1)).name == b((host, 2)).name


def test_source_hash_spreads_different_hosts():
    loops = fake_loops(4)
    pick = make_balancer("source-addr-hash", loops)
    hosts = [f"10.0.{i // 256}.{i % 256}" for i in range(400)]
    counts = Counter(pick((h, 5555)).name for h in hosts)
    assert set(counts) == {lp.name for lp in loops}
    assert min(counts.values()) >= 50, counts  # 100 each on average


@pytest.mark.parametrize("addr, key", [("", b""), (b"\0abstract", b"\0abstract"), ("/tmp/peer.sock", b"/tmp/peer.sock"),
                                       (None, b"None")])
def test_source_hash_unix_and_odd_addresses(addr, key):
    loops = fake_loops(3)
    pick = make_balancer("source-addr-hash", loops)
    assert pick(addr) is loops[zlib.crc32(key) % 3]
    assert pick(addr) is pick(addr)
