"""Framed handlers: give the engine a codec, receive whole frames.

    import netreactor as nr
    from netreactor.codec import LengthFieldCodec

    class Reverse(nr.FramedHandler):
        codec = LengthFieldCodec(4)

        def on_frame(self, conn, frame):
            return frame[::-1]          # bytes returned are encoded and sent

    nr.run(Reverse(), "tcp://127.0.0.1:9000")

The decoder of each connection lives in the connection itself, so frames split
across reads and many frames per read both just work. A peer that sends a
malformed or oversized frame has its connection closed, and ``on_close``
receives the :class:`netreactor.codec.FrameError`; the frames it sent before
the bad one are still delivered.
"""

from __future__ import annotations

from typing import List, Optional, Union

from .codec import Codec, FrameError
from .conn import Conn
from .handler import Action, EventHandler

__all__ = ["FramedHandler"]

FrameResult = Union[None, Action, bytes, bytearray, memoryview]


class FramedHandler(EventHandler):
    """An :class:`EventHandler` that speaks in frames.

    Set ``codec`` as a class attribute or pass it to ``__init__``, and implement
    :meth:`on_frame`. Override ``on_open``/``on_close`` freely; if you override
    ``on_traffic``, frames are no longer decoded for you.
    """

    codec: Optional[Codec] = None

    def __init__(self, codec: Optional[Codec] = None) -> None:
        if codec is not None:
            self.codec = codec
        if not isinstance(self.codec, Codec):
            raise ValueError(
                f"{type(self).__name__} needs a codec (a netreactor.codec.Codec): "
                f"set the class attribute 'codec' or pass codec=..., got {self.codec!r}")
        # Bound once: on_traffic runs for every read.
        self._encode = self.codec.encode
        self._new_decoder = self.codec.decoder

    def on_frame(self, conn: Conn, frame: bytes) -> FrameResult:
        """One whole frame arrived. Return bytes to send them back encoded as one
        frame, or an :class:`Action`, or None."""
        return None

    def send(self, conn: Conn, payload: Union[bytes, bytearray, memoryview]) -> int:
        """Encode ``payload`` as one frame and write it (any frame, any time on the loop)."""
        return conn.write(self._encode(payload))

    def on_traffic(self, conn: Conn) -> Optional[Action]:
        decoder = conn._framing
        if decoder is None:
            decoder = conn._framing = self._new_decoder()
        try:
            frames: List[bytes] = decoder.feed(conn.read())
        except FrameError as exc:
            # Frames that preceded the bad one are the peer's real requests.
            action = self._deliver(conn, exc.frames)
            conn._begin_close(exc)  # replies already written still go out first
            return action
        return self._deliver(conn, frames)

    def _deliver(self, conn: Conn, frames: List[bytes]) -> Optional[Action]:
        on_frame = self.on_frame
        encode = self._encode
        write = conn.write
        for frame in frames:
            result = on_frame(conn, frame)
            if result is None:
                continue
            if isinstance(result, Action):
                if result is not Action.NONE:
                    return result
                continue
            # Written at once, so replies and send() calls keep their order; the
            # connection gathers everything written in this callback into one writev.
            write(encode(result))
        return None
