"""Framed handlers: give the engine a codec, receive whole frames.

    import netreactor as nr
    from netreactor.codec import LengthFieldCodec

    class Reverse(nr.FramedHandler):
        codec = LengthFieldCodec(4)

        def on_frame(self, conn, frame):
            return frame[::-1]          # bytes returned are encoded and sent

    nr.run(Reverse(), "tcp://127.0.0.1:9000")

Or implement ``on_frames(conn, frames)`` to take every frame a read completed
in one call and return the list of replies: the faster choice when clients
pipeline, since no Python call is made per frame.

The decoder of each connection lives in the connection's ``handler_state``
(the slot the core leaves to handler base classes), so frames split across
reads and many frames per read both just work, and ``context`` stays yours. A peer that sends a
malformed or oversized frame has its connection closed, and ``on_close``
receives the :class:`netreactor.codec.FrameError`; the frames it sent before
the bad one are still delivered.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Union

from .codec import Codec, Decoder, FrameError
from .handler import Action, EventHandler
from .stream.conn import Conn

__all__ = ["FramedHandler", "debug_framing"]

FrameResult = Union[None, Action, bytes, bytearray, memoryview]
FramesResult = Union[None, Action, List[bytes], Iterable[Union[bytes, bytearray, memoryview]]]


class _FrameState:
    """One connection's framing: its decoder, and the replies being gathered
    while ``on_frames`` runs (None outside it)."""

    __slots__ = ("decoder", "gathered")

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.gathered: Optional[List[bytes]] = None


class FramedHandler(EventHandler):
    """An :class:`EventHandler` that speaks in frames.

    Set ``codec`` as a class attribute or pass it to ``__init__``, and implement
    :meth:`on_frame` (one call per frame) or :meth:`on_frames` (one call per
    read, with all the frames it completed). Override ``on_open``/``on_close`` freely; if you override
    ``on_traffic``, frames are no longer decoded for you.
    """

    codec: Optional[Codec] = None

    def __init__(self, codec: Optional[Codec] = None) -> None:
        # Optional for subclasses: nothing here is needed later except the
        # codec, read from ``self.codec`` (a class attribute usually) at each use.
        if codec is not None:
            self.codec = codec
        self.check_codec()

    def check_codec(self) -> Codec:
        """The codec this handler frames with; ``ValueError`` if it has none.

        The engine and the client call it before binding, so a subclass whose
        ``__init__`` forgot to pass its codec on fails at construction."""
        codec = self.codec
        if not isinstance(codec, Codec):
            raise ValueError(
                f"{type(self).__name__} needs a codec (a netreactor.codec.Codec): "
                f"set the class attribute 'codec', or pass codec=... to "
                f"FramedHandler.__init__(), got {codec!r}")
        return codec

    def on_frame(self, conn: Conn, frame: bytes) -> FrameResult:
        """One whole frame arrived. Return bytes to send them back encoded as one
        frame, or an :class:`Action`, or None."""
        return None

    def on_frames(self, conn: Conn, frames: List[bytes]) -> FramesResult:
        """All the frames one read completed, in order (never empty).

        Return the replies as a list of payloads -- they are encoded together
        and sent with one write -- or an :class:`Action`, or None. The default
        calls :meth:`on_frame` for each frame; override this instead when a
        whole burst is cheaper to handle at once (a pipelining client sends
        many frames per read). ``frames`` is yours to keep or return.
        """
        replies: List[bytes] = conn.handler_state.gathered  # the list send() also gathers into
        on_frame = self.on_frame
        for frame in frames:
            result = on_frame(conn, frame)
            if result.__class__ is bytes:
                replies.append(result)
            elif result is None:
                continue
            elif isinstance(result, Action):
                if result is not Action.NONE:
                    return result
            else:
                replies.append(bytes(result))
        return None

    def send(self, conn: Conn, payload: Union[bytes, bytearray, memoryview]) -> int:
        """Encode ``payload`` as one frame and write it (any time, on the loop).

        Inside ``on_frame``/``on_frames`` the frame joins the replies being
        gathered, so it keeps its place among them."""
        state = conn.handler_state
        if state is not None and state.gathered is not None:
            state.gathered.append(bytes(payload))
            return len(payload)
        return conn.write(self.codec.encode(payload))  # type: ignore[union-attr]

    def on_traffic(self, conn: Conn) -> Optional[Action]:
        state = conn.handler_state
        if state is None:
            state = conn.handler_state = _FrameState(self.codec.decoder())  # type: ignore[union-attr]
        try:
            frames: List[bytes] = state.decoder.feed(conn.read())
        except FrameError as exc:
            # Frames that preceded the bad one are the peer's real requests.
            action = self._deliver(conn, state, exc.frames) if exc.frames else None
            conn.close(error=exc)  # replies already written still go out first
            return action
        if frames:
            return self._deliver(conn, state, frames)
        return None

    def _deliver(self, conn: Conn, state: _FrameState, frames: List[bytes]) -> Optional[Action]:
        gathered: List[bytes] = []
        state.gathered = gathered
        try:
            result = self.on_frames(conn, frames)
        finally:
            # A handler that raised closes its connection (the engine's rule), so
            # what it gathered goes nowhere; only a normal return sends.
            state.gathered = None
        if result.__class__ is list:
            if gathered:
                gathered += result  # send()s made during the call go first
                result = gathered
            if result:
                conn.write(self.codec.encode_many(result))  # one encode pass, one write
            return None
        if gathered:
            conn.write(self.codec.encode_many(gathered))
        if result is None:
            return None
        if isinstance(result, Action):
            return None if result is Action.NONE else result
        # Any other iterable of payloads (a tuple, a generator).
        replies = [r if r.__class__ is bytes else bytes(r) for r in result]
        if replies:
            conn.write(self.codec.encode_many(replies))
        return None


class _CountingView:
    """Debug mode's view of a framed handler: FramedHandler's own framing, run
    with this object as ``self``, so that what ``on_frame`` returns is seen.
    Anything else is the handler's."""

    def __init__(self, handler: FramedHandler) -> None:
        self._handler = handler
        self._on_frame = handler.on_frame
        self.frames = 0
        self.nones = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)

    def on_frame(self, conn: Conn, frame: bytes) -> FrameResult:
        result = self._on_frame(conn, frame)
        self.frames += 1
        if result is None:
            self.nones += 1
        return result

    on_traffic = FramedHandler.on_traffic
    on_frames = FramedHandler.on_frames
    _deliver = FramedHandler._deliver


def debug_framing(handler: FramedHandler,
                  report: Callable[[int], None]) -> Optional[Callable[[Conn], Optional[Action]]]:
    """Debug mode: an ``on_traffic`` for ``handler`` that frames as it does and
    calls ``report(frames)`` after a read whose every frame ``on_frame``
    answered with None while nothing was written; None when the handler does
    its own framing (``on_traffic`` or ``on_frames`` overridden) or has no
    ``on_frame``."""
    cls = type(handler)
    if cls.on_traffic is not FramedHandler.on_traffic or cls.on_frames is not FramedHandler.on_frames \
            or cls.on_frame is FramedHandler.on_frame:
        return None
    view = _CountingView(handler)

    def on_traffic(conn: Conn) -> Optional[Action]:
        before = conn.outbound_buffered
        view.frames = view.nones = 0
        action = FramedHandler.on_traffic(view, conn)  # type: ignore[arg-type]
        if view.frames and view.nones == view.frames and action is None and not conn.closed \
                and conn.outbound_buffered == before:
            report(view.frames)
        return action

    return on_traffic
