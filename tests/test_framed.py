"""Framed handlers end to end: a framed echo over real sockets, frames split
across reads and many per read, and a malformed stream costing one connection."""

from __future__ import annotations

import os
import random
import struct
import threading

import pytest

import netreactor as nr
from netreactor.codec import FrameError, LengthFieldCodec, LineCodec
from conftest import CORE_CONFIGS, TRANSPORTS, address_for, connect, recv_exact, recv_until_eof, serving


class FramedEcho(nr.FramedHandler):
    codec = LengthFieldCodec(4, max_frame_length=1 << 20)

    def __init__(self):
        super().__init__()
        self.closed = []
        self.closed_event = threading.Event()

    def on_frame(self, conn, frame):
        return frame

    def on_close(self, conn, err):
        self.closed.append(err)
        self.closed_event.set()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_framed_echo_any_split(opts, transport, unix_path):
    rng = random.Random(7)
    payloads = [os.urandom(rng.choice([0, 1, 64, 1000, 70_000])) for _ in range(300)]
    codec = FramedEcho.codec
    stream = b"".join(codec.encode(p) for p in payloads)
    with serving(FramedEcho(), address_for(transport, unix_path), **opts) as engine:
        with connect(engine.addresses[0]) as s:
            def send():
                i = 0
                while i < len(stream):  # random cuts: frames straddle reads, many share one
                    n = rng.choice([1, 3, 17, 4096, 100_000])
                    s.sendall(stream[i:i + n])
                    i += n

            t = threading.Thread(target=send)
            t.start()
            echoed = recv_exact(s, len(stream))
            t.join()
    decoder = codec.decoder()
    assert decoder.feed(echoed) == payloads


def test_malformed_frame_closes_only_that_connection_after_earlier_frames():
    handler = FramedEcho()
    codec = FramedEcho.codec
    with serving(handler, "tcp://127.0.0.1:0") as engine:
        good = connect(engine.addresses[0])
        bad = connect(engine.addresses[0])
        # A valid frame, then a header announcing 2 GiB: over max_frame_length.
        bad.sendall(codec.encode(b"first") + struct.pack("!I", 1 << 31))
        assert recv_until_eof(bad) == codec.encode(b"first")
        assert handler.closed_event.wait(5)
        assert isinstance(handler.closed[0], FrameError)
        good.sendall(codec.encode(b"still fine"))
        assert recv_exact(good, 14) == codec.encode(b"still fine")
        good.close()
        bad.close()


def test_on_frame_actions_and_send():
    class Chat(nr.FramedHandler):
        codec = LineCodec()

        def on_open(self, conn):
            self.send(conn, b"welcome")

        def on_frame(self, conn, frame):
            if frame == b"quit":
                self.send(conn, b"bye")
                return nr.Action.CLOSE
            return frame.upper()

    with serving(Chat(), "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"hello\r\nworld\nquit\r\nignored\n")
            assert recv_until_eof(s) == b"welcome\r\nHELLO\r\nWORLD\r\nbye\r\n"


def test_framed_handler_needs_a_codec():
    class NoCodec(nr.FramedHandler):
        pass

    with pytest.raises(ValueError, match="needs a codec"):
        NoCodec()
    assert NoCodec(codec=LineCodec()).codec is not None
