"""Unit tests for netreactor.options and the Engine constructor's up-front validation."""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import fields

import pytest

import netreactor as nr
from netreactor.engine import parse_addresses
from netreactor.options import LOAD_BALANCERS, POLLERS, Options

KiB = 1024
MiB = 1024 * KiB

PUBLIC = [f for f in fields(Options) if not f.name.startswith("_")]
CONTRACT_OPTIONS = ["loops", "multicore", "lb", "reuse_port", "reuse_addr", "ticker", "read_buffer_cap",
                    "write_buffer_cap", "tcp_no_delay", "tcp_keepalive", "socket_recv_buffer",
                    "socket_send_buffer", "edge_triggered", "workers", "logger"]


class Handler(nr.EventHandler):
    pass


# ---------------------------------------------------------------- defaults

def test_defaults_validate():
    Options().validate()
    assert Options.from_kwargs({}) == Options()


@pytest.mark.parametrize("f", PUBLIC, ids=lambda f: f.name)
def test_each_default_passed_explicitly_validates(f):
    default = getattr(Options(), f.name)
    opts = Options.from_kwargs({f.name: default})
    assert getattr(opts, f.name) == default


@pytest.mark.parametrize("name", CONTRACT_OPTIONS)
def test_contract_options_exist(name):
    assert name in {f.name for f in PUBLIC}


def test_get_logger():
    assert Options().get_logger() is logging.getLogger("netreactor")
    mine = logging.getLogger("netreactor.test.mine")
    assert Options.from_kwargs({"logger": mine}).get_logger() is mine


# ---------------------------------------------------------------- good non-default values

@pytest.mark.parametrize(
    "kwargs",
    [
        dict(loops=1), dict(loops=4096), dict(loops=8),
        *[dict(lb=name) for name in LOAD_BALANCERS],
        *[dict(poller=name) for name in POLLERS if name != "epoll" or hasattr(__import__("select"), "epoll")],
        dict(read_buffer_cap=512), dict(read_buffer_cap=64 * MiB),
        dict(tcp_keepalive=0.5), dict(tcp_keepalive=30), dict(tcp_keepalive=None),
        dict(socket_recv_buffer=1), dict(socket_send_buffer=1 << 20),
        dict(workers=None), dict(workers=1), dict(workers=1024),
        dict(shutdown_timeout=0), dict(shutdown_timeout=0.25),
        dict(write_low_water=0), dict(write_low_water=1000, write_high_water=1000),
        dict(write_high_water=8 * MiB, write_buffer_cap=8 * MiB),
        dict(logger=logging.LoggerAdapter(logging.getLogger("x"), {})),
        dict(edge_triggered=True, poller="auto"),
        dict(backlog=1), dict(backlog=1 << 20),
        dict(multicore=True, reuse_port=True, reuse_addr=False, ticker=True, tcp_no_delay=False,
             cpu_affinity=True),
    ],
    ids=repr,
)
def test_good_values(kwargs):
    opts = Options.from_kwargs(kwargs)
    for k, v in kwargs.items():
        assert getattr(opts, k) is v or getattr(opts, k) == v


# ---------------------------------------------------------------- bad values

BAD = [
    ("loops", 0), ("loops", -1), ("loops", 4097), ("loops", "4"), ("loops", 1.5), ("loops", True),
    ("loops", None),
    ("multicore", 1), ("multicore", "yes"), ("multicore", None),
    ("lb", "random"), ("lb", None), ("lb", "Round-Robin"), ("lb", ["round-robin"]),
    ("reuse_port", 1), ("reuse_addr", "true"), ("ticker", 0), ("tcp_no_delay", None),
    ("edge_triggered", 1), ("cpu_affinity", "no"),
    ("read_buffer_cap", 511), ("read_buffer_cap", 64 * MiB + 1), ("read_buffer_cap", 1024.0),
    ("read_buffer_cap", True), ("read_buffer_cap", "64k"),
    ("inbound_buffer_cap", 0), ("inbound_buffer_cap", 511), ("inbound_buffer_cap", None),
    ("write_buffer_cap", 0), ("write_buffer_cap", "big"), ("write_buffer_cap", False),
    ("write_high_water", 0), ("write_high_water", 1.0),
    ("write_low_water", -1), ("write_low_water", None),
    ("tcp_keepalive", 0), ("tcp_keepalive", -1), ("tcp_keepalive", True), ("tcp_keepalive", "10"),
    ("tcp_keepalive", math.nan), ("tcp_keepalive", math.inf),
    ("socket_recv_buffer", 0), ("socket_recv_buffer", True), ("socket_recv_buffer", 1.5),
    ("socket_send_buffer", -5), ("socket_send_buffer", (1 << 31) + 1),
    ("workers", 0), ("workers", True), ("workers", 1025), ("workers", 2.0),
    ("logger", "netreactor"), ("logger", object()), ("logger", print),
    ("poller", "kqueue"), ("poller", None), ("poller", "EPOLL"),
    ("shutdown_timeout", -1), ("shutdown_timeout", "5"), ("shutdown_timeout", True),
    ("shutdown_timeout", math.nan), ("shutdown_timeout", math.inf), ("shutdown_timeout", None),
    ("backlog", 0), ("backlog", True), ("backlog", (1 << 20) + 1),
]


@pytest.mark.parametrize("name, value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_value_names_the_option(name, value):
    with pytest.raises(ValueError) as info:
        Options.from_kwargs({name: value})
    assert f"'{name}'" in str(info.value)


def test_low_water_above_high_water():
    with pytest.raises(ValueError, match="'write_low_water'.*'write_high_water'"):
        Options.from_kwargs(dict(write_low_water=200 * KiB, write_high_water=100 * KiB))


def test_high_water_above_cap():
    with pytest.raises(ValueError, match="'write_high_water'.*'write_buffer_cap'"):
        Options.from_kwargs(dict(write_buffer_cap=1000))  # default high water is 256 KiB
    with pytest.raises(ValueError, match="'write_high_water'"):
        Options.from_kwargs(dict(write_high_water=2000, write_low_water=10, write_buffer_cap=1999))


def test_edge_triggered_needs_epoll():
    with pytest.raises(ValueError, match="'edge_triggered'"):
        Options.from_kwargs(dict(edge_triggered=True, poller="selectors"))
    Options.from_kwargs(dict(edge_triggered=False, poller="selectors"))


# ---------------------------------------------------------------- unknown names

@pytest.mark.parametrize(
    "key, suggestion",
    [("loop", "loops"), ("tcp_nodelay", "tcp_no_delay"), ("edge_trigger", "edge_triggered"),
     ("reuseport", "reuse_port"), ("worker", "workers"), ("read_buffer_size", "read_buffer_cap"),
     ("lbs", "lb")],
)
def test_unknown_option_did_you_mean(key, suggestion):
    with pytest.raises(ValueError) as info:
        Options.from_kwargs({key: 1})
    msg = str(info.value)
    assert f"unknown option {key!r}" in msg
    assert f"did you mean {suggestion!r}" in msg


@pytest.mark.parametrize("key", ["zzzzzz", "_extra", "xyzzy_plugh"])
def test_unknown_option_without_near_miss_lists_options(key):
    with pytest.raises(ValueError) as info:
        Options.from_kwargs({key: 1})
    msg = str(info.value)
    assert f"unknown option {key!r}" in msg
    assert "did you mean" not in msg
    assert "loops" in msg and "edge_triggered" in msg


# ---------------------------------------------------------------- Engine: raised before binding

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_port_free(port: int) -> None:
    """Bind and listen on ``port`` ourselves: proof the engine left it alone."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)


@pytest.mark.parametrize(
    "options, fragment",
    [
        (dict(loops=0), "'loops'"),
        (dict(lb="random"), "'lb'"),
        (dict(edge_triggered=True, poller="selectors"), "'edge_triggered'"),
        (dict(write_low_water=10, write_high_water=5), "'write_low_water'"),
        (dict(loop=2), "did you mean 'loops'"),
        (dict(logger="netreactor"), "'logger'"),
    ],
)
def test_engine_bad_option_binds_nothing(options, fragment, unix_path):
    port = _free_port()
    with pytest.raises(ValueError) as info:
        nr.Engine(Handler(), f"tcp://127.0.0.1:{port}", f"unix://{unix_path}", **options)
    assert fragment in str(info.value)
    _assert_port_free(port)
    assert not os.path.exists(unix_path)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("tcp://127.0.0.1:notaport", "notaport"),
        ("127.0.0.1:9000", "no scheme"),
        ("http://127.0.0.1:80", "'http'"),
        ("tcp://127.0.0.1:65536", "65536"),
        ("tcp4://[::1]:80", "'::1'"),
        ("unix://", "empty"),
        (9000, "must be a string"),
    ],
)
def test_engine_bad_address_binds_nothing(bad, fragment, unix_path):
    port = _free_port()
    # the bad address comes after good ones: they must not have been bound either
    with pytest.raises(ValueError) as info:
        nr.Engine(Handler(), f"tcp://127.0.0.1:{port}", f"unix://{unix_path}", bad)
    assert fragment in str(info.value)
    _assert_port_free(port)
    assert not os.path.exists(unix_path)


def test_run_with_bad_option_raises_without_serving():
    port = _free_port()
    with pytest.raises(ValueError, match="did you mean 'loops'"):
        nr.run(Handler(), f"tcp://127.0.0.1:{port}", lops=2)
    _assert_port_free(port)


def test_engine_constructed_but_not_started_binds_nothing(unix_path):
    port = _free_port()
    engine = nr.Engine(Handler(), f"tcp://127.0.0.1:{port}", f"unix://{unix_path}", loops=2)
    assert engine.count_connections() == 0
    _assert_port_free(port)
    assert not os.path.exists(unix_path)


def test_engine_handler_class_instead_of_instance():
    with pytest.raises(ValueError, match=r"instance.*Handler\(\)"):
        nr.Engine(Handler, "tcp://127.0.0.1:0")  # type: ignore[arg-type]


@pytest.mark.parametrize("handler", [object(), None, lambda conn: None, "Handler"])
def test_engine_handler_not_an_event_handler(handler):
    with pytest.raises(ValueError, match="EventHandler"):
        nr.Engine(handler, "tcp://127.0.0.1:0")


def test_engine_duck_typed_handler_is_rejected():
    class Duck:  # has the callbacks, but is not an EventHandler
        def on_traffic(self, conn):
            pass

    with pytest.raises(ValueError, match="EventHandler.*Duck"):
        nr.Engine(Duck(), "tcp://127.0.0.1:0")  # type: ignore[arg-type]


def test_engine_no_address():
    with pytest.raises(ValueError, match="no address"):
        nr.Engine(Handler())


@pytest.mark.parametrize(
    "addrs",
    [
        ("tcp://127.0.0.1:9000", "tcp://127.0.0.1:9000"),
        ("tcp://127.0.0.1:9000", "TCP://127.0.0.1:09000"),  # the same address once normalised
        ("tcp6://[::1]:9000", "tcp6://[::1]:9000"),
        ("unix:///tmp/nr-dup.sock", "unix:///tmp/nr-dup.sock"),
        ("unix://@nr-dup", "tcp://127.0.0.1:1", "unix://@nr-dup"),
    ],
)
def test_engine_duplicated_address(addrs):
    with pytest.raises(ValueError, match="given twice"):
        nr.Engine(Handler(), *addrs)


def test_port_zero_may_repeat():
    assert len(parse_addresses(["tcp://127.0.0.1:0", "tcp://127.0.0.1:0"])) == 2
    nr.Engine(Handler(), "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")


def test_engine_accepts_udp_and_rejects_bad_udp_options_up_front():
    nr.Engine(Handler(), "udp://127.0.0.1:0")  # constructing binds nothing
    with pytest.raises(ValueError, match="udp_session_timeout"):
        nr.Engine(Handler(), "udp://127.0.0.1:0", udp_session_timeout=0)
    with pytest.raises(ValueError, match="udp_max_sessions"):
        nr.Engine(Handler(), "udp://127.0.0.1:0", udp_max_sessions=0)
    with pytest.raises(ValueError, match="multicast_interface"):
        nr.Engine(Handler(), "udp://239.1.2.3:0", multicast_interface="no-such-interface0")
