"""Follow a capture file while another program writes it (``tail -f`` for pcap):
QEMU's ``filter-dump`` of a guest NIC, ``tcpdump -U -w``.  A thin driver around
the incremental :class:`~bridge.capture.pcapfile.CaptureParser`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

from bridge.capture.frames import Frame
from bridge.capture.pcapfile import CaptureParser


def follow_capture(path: str | os.PathLike[str], stop: threading.Event, *, from_start: bool = False,
                   poll_interval: float = 0.005, chunk: int = 1 << 20) -> Iterator[Frame | None]:
    """Frames as they are appended; None after each wait with nothing new (so the
    consumer can do timed work).  Frames already in the file are skipped unless
    ``from_start``.  Waits for the file to appear.  Ends when ``stop`` is set."""
    while not os.path.exists(path):
        if stop.wait(poll_interval):
            return
        yield None
    parser = CaptureParser()
    with open(path, "rb") as handle:
        if not from_start:
            while data := handle.read(chunk):
                parser.feed(data)  # what happened before we came
        while not stop.is_set():
            data = handle.read(chunk)
            if data:
                yield from parser.feed(data)
                continue
            time.sleep(poll_interval)
            yield None
