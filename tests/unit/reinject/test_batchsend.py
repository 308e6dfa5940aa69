"""sendmmsg batches on a datagram socket pair (no privileges needed: the AF_PACKET
socket of the product takes the same calls; tests/test_reinject_outputs.py runs
them on a veth): every frame arrives once, in order; a refused frame is an error
with its errno and the frames after it still go out."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator

import pytest

from bridge.reinject.batchsend import (
    MAX_BATCH,
    STAGE_BYTES,
    MultiSender,
    SingleSender,
    open_sender,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    with a, b:
        yield a, b


def _receive(sock: socket.socket, count: int) -> tuple[list[bytes], threading.Thread]:
    got: list[bytes] = []

    def run() -> None:
        sock.settimeout(10)
        while len(got) < count:
            got.append(sock.recv(STAGE_BYTES + 64))

    thread = threading.Thread(target=run)
    thread.start()
    return got, thread


def _frames(count: int, size: int = 0) -> list[bytes]:
    return [b"frame-%06d|" % i + bytes([i % 251]) * (size or (i * 53) % 3000) for i in range(count)]


@pytest.mark.parametrize("count", [1, 2, MAX_BATCH - 1, MAX_BATCH, 3 * MAX_BATCH + 5])
def test_every_frame_once_in_order(pair, count):
    sender = open_sender(pair[0])
    assert isinstance(sender, MultiSender) and sender.method == "sendmmsg"
    frames = _frames(count)
    got, thread = _receive(pair[1], count)
    result = sender.send(frames)
    thread.join(30)
    assert got == frames
    assert (result.frames, result.bytes, result.errors) == (count, sum(map(len, frames)), [])


def test_batches_end_where_the_staging_buffer_is_full(pair):
    frames = _frames(3 * STAGE_BYTES // 60_000, size=60_000)  # three staging buffers' worth
    frames.append(b"x" * (STAGE_BYTES + 1))  # larger than the staging buffer: sent on its own
    pair[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    got, thread = _receive(pair[1], len(frames))
    result = open_sender(pair[0]).send(frames)
    thread.join(30)
    assert got == frames
    assert (result.frames, result.errors) == (len(frames), [])


def test_a_refused_frame_is_counted_and_the_rest_go_out(pair):
    pair[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    limit = pair[0].getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    too_big = b"B" * (limit + 1)
    frames = _frames(300, size=100)
    frames[10:10] = [too_big]
    frames[200:200] = [too_big, too_big]
    good = [f for f in frames if f is not too_big]
    got, thread = _receive(pair[1], len(good))
    result = open_sender(pair[0]).send(frames)
    thread.join(30)
    assert got == good
    assert result.frames == len(good) and result.bytes == sum(map(len, good))
    assert result.errors == [errno.EMSGSIZE] * 3


def test_single_sender_is_the_same_interface(pair):
    frames = _frames(50) + [b"B" * (1 << 22)]
    got, thread = _receive(pair[1], 50)
    result = SingleSender(pair[0]).send(frames)
    thread.join(30)
    assert got == frames[:50]
    assert result.frames == 50 and result.errors == [errno.EMSGSIZE]
