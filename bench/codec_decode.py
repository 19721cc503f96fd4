"""Decoder throughput: frames/s of each codec against a hand-written loop.

Run ``python3 bench/codec_decode.py`` (about 15 s) or ``--quick`` (under 5 s).

Every case decodes the same kind of stream: 64-byte payloads, many frames per
``feed`` call (``--feed-bytes``, default 64 KiB per call, like a large recv).
The reference is the simplest hand-written ``struct.unpack_from`` loop over the
same bytes as the 4-byte big-endian length-field case; the report gives each
codec's time relative to it (the target for LengthFieldCodec is <= 1.5x).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from typing import Callable, List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from netreactor.codec import (  # noqa: E402
    DelimiterCodec,
    FixedLengthCodec,
    LengthFieldCodec,
    LineCodec,
)

PAYLOAD = 64


def hand_written(chunks: List[bytes]) -> int:
    """The baseline: 4-byte big-endian header, no checks but "is it all here"."""
    unpack_from = struct.Struct(">I").unpack_from
    n = 0
    tail = b""
    for data in chunks:
        if tail:
            data = tail + data
        frames = []
        pos = 0
        end = len(data)
        while pos + 4 <= end:
            (length,) = unpack_from(data, pos)
            stop = pos + 4 + length
            if stop > end:
                break
            frames.append(data[pos + 4 : stop])
            pos = stop
        tail = data[pos:]
        n += len(frames)
    return n


def codec_runner(codec) -> Callable[[List[bytes]], int]:
    def run(chunks: List[bytes]) -> int:
        feed = codec.decoder().feed
        n = 0
        for data in chunks:
            n += len(feed(data))
        return n

    return run


def make_chunks(stream: bytes, size: int) -> List[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def payloads(count: int, avoid: bytes = b"") -> List[bytes]:
    # Printable payloads (no b"\n", b"\r" or b"|") so one set serves every codec.
    base = bytes(range(0x21, 0x7B))
    base = bytes(c for c in base if c not in avoid)
    return [(base[i % len(base) :] + base)[:PAYLOAD] for i in range(count)]


def measure_all(cases, count: int, seconds: float) -> List[float]:
    """Best frames/s of each case. The cases take turns, round after round,
    so that drifting load on the machine hits them all alike."""
    best = [float("inf")] * len(cases)
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < 3 or time.perf_counter() < deadline:
        for k, (label, fn, chunks) in enumerate(cases):
            t0 = time.perf_counter()
            got = fn(chunks)
            dt = time.perf_counter() - t0
            if got != count:
                raise SystemExit(f"{label}: decoded {got} frames, expected {count}")
            best[k] = min(best[k], dt)
        rounds += 1
    return [count / t for t in best]


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer frames and shorter runs (< 5 s)")
    ap.add_argument("--frames", type=int, default=None, help="frames per stream (default 100000, quick 20000)")
    ap.add_argument("--feed-bytes", type=int, default=65536, help="bytes per feed() call (default 65536)")
    args = ap.parse_args(argv)
    count = args.frames or (20_000 if args.quick else 100_000)
    seconds = 2.5 if args.quick else 18.0

    pl = payloads(count, avoid=b"\r\n|")
    lf4 = LengthFieldCodec(4, max_frame_length=1 << 16)
    # (label, codec that encodes the stream, decoding function)
    cases = [("hand-written unpack_from loop (4-byte BE)", lf4, hand_written)]
    for label, codec in [
        ("LengthFieldCodec(4) big-endian", lf4),
        ("LengthFieldCodec(2) little-endian", LengthFieldCodec(2, byteorder="little")),
        ("LengthFieldCodec(3) big-endian", LengthFieldCodec(3)),
        ("LengthFieldCodec(8) big-endian", LengthFieldCodec(8)),
        ("LineCodec (\\r\\n)", LineCodec()),
        ("DelimiterCodec(b'|')", DelimiterCodec(b"|")),
        ("DelimiterCodec([b'|', b'\\r\\n'])", DelimiterCodec([b"|", b"\r\n"])),
        ("FixedLengthCodec(64)", FixedLengthCodec(PAYLOAD)),
    ]:
        cases.append((label, codec, codec_runner(codec)))
    print(f"Python {sys.version.split()[0]}; {PAYLOAD}-byte payloads; {count} frames per stream")
    print("ratio = time per frame / time per frame of the hand-written loop (lower is faster)")
    width = max(len(c[0]) for c in cases)
    scenarios = [
        (f"many frames per feed() ({args.feed_bytes} bytes per call, like a large recv)", args.feed_bytes, 0.7),
        ("one frame per feed() (ping-pong: the per-call overhead)", None, 0.3),
    ]
    for title, feed_bytes, share in scenarios:
        print(f"\n{title}")
        runs = []
        for label, codec, fn in cases:
            stream = b"".join(map(codec.encode, pl))
            if feed_bytes is None:
                chunks = list(map(codec.encode, pl))
            else:
                chunks = make_chunks(stream, feed_bytes)
            runs.append((label, fn, chunks))
        rates = measure_all(runs, count, seconds * share)
        for (label, _, _), rate in zip(cases, rates):
            print(f"  {label:<{width}}  {rate:>12,.0f} frames/s   ratio {rates[0] / rate:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
