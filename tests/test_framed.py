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


class BatchEcho(FramedEcho):
    """The same echo through the burst API: every read's frames in one call."""

    def __init__(self):
        super().__init__()
        self.bursts = []

    def on_frame(self, conn, frame):
        raise AssertionError("on_frames is overridden: on_frame must not be called")

    def on_frames(self, conn, frames):
        self.bursts.append(len(frames))
        return frames


@pytest.mark.parametrize("handler_class", [FramedEcho, BatchEcho])
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opts", CORE_CONFIGS)
def test_framed_echo_any_split(opts, transport, unix_path, handler_class):
    rng = random.Random(7)
    payloads = [os.urandom(rng.choice([0, 1, 64, 1000, 70_000])) for _ in range(300)]
    codec = FramedEcho.codec
    stream = b"".join(codec.encode(p) for p in payloads)
    handler = handler_class()
    with serving(handler, address_for(transport, unix_path), **opts) as engine:
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
    if handler_class is BatchEcho:
        # Every burst was whole frames, none empty, and they add up.
        assert min(handler.bursts) >= 1 and sum(handler.bursts) == len(payloads)


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


def test_on_frames_gets_a_whole_read_and_its_replies_go_out_in_one_write():
    seen = []

    class Sum(nr.FramedHandler):
        codec = LineCodec()

        def on_frames(self, conn, frames):
            seen.append(list(frames))
            return [b"%d" % sum(int(f) for f in frames)]

    with serving(Sum(), "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            s.sendall(b"1\n2\n3\n")  # one segment: one read, one burst
            assert recv_exact(s, 3) == b"6\r\n"
            s.sendall(b"10\n")
            assert recv_exact(s, 4) == b"10\r\n"
    assert seen == [[b"1", b"2", b"3"], [b"10"]]


def test_on_frames_send_order_actions_and_iterables():
    class Burst(nr.FramedHandler):
        codec = LineCodec()

        def on_frames(self, conn, frames):
            if frames[0] == b"tuple":
                return (b"a", bytearray(b"b"), memoryview(b"c"))
            if frames[0] == b"gen":
                return (f.upper() for f in frames)
            if frames[0] == b"none":
                self.send(conn, b"sent")
                return None
            if frames[0] == b"quit":
                self.send(conn, b"bye")
                return nr.Action.CLOSE
            self.send(conn, b"first")  # sends made during the call go before the list
            return [b"second"]

    with serving(Burst(), "tcp://127.0.0.1:0") as engine:
        with connect(engine.addresses[0]) as s:
            for line, reply in [(b"tuple", b"a\r\nb\r\nc\r\n"), (b"gen\nx", b"GEN\r\nX\r\n"),
                                (b"none", b"sent\r\n"), (b"list", b"first\r\nsecond\r\n")]:
                s.sendall(line + b"\n")
                assert recv_exact(s, len(reply)) == reply
            s.sendall(b"quit\nnever\n")
            assert recv_until_eof(s) == b"bye\r\n"


def test_on_frames_raising_closes_that_connection_only(expected_errors):
    class Fails(nr.FramedHandler):
        codec = LineCodec()

        def on_frames(self, conn, frames):
            if frames[-1] == b"boom":
                raise RuntimeError("handler bug")
            return frames

    with serving(Fails(), "tcp://127.0.0.1:0") as engine:
        other = connect(engine.addresses[0])
        with connect(engine.addresses[0]) as s:
            s.sendall(b"boom\n")
            assert recv_until_eof(s) == b""
        other.sendall(b"still\n")  # the loop and the other connection go on
        assert recv_exact(other, 7) == b"still\r\n"
        other.close()
    assert any(r.exc_info and "handler bug" in str(r.exc_info[1]) for r in expected_errors)
