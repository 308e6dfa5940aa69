"""Network namespaces for tests: run code inside one, and a veth pair va<->vb in its own namespace."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread that joined network namespace ``ns`` (sockets keep the ns)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    t = threading.Thread(target=runner)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


@contextlib.contextmanager
def veth_namespace(prefix: str = "tlsb-veth", *, injection: bool = False, mtu: int | None = None) -> Iterator[str]:
    """A fresh namespace holding a veth pair ``va``/``vb`` (both up); deleted on exit.

    ``injection``: also the sensor's injection pair ``tls0``/``tls0peer`` and ``lo``
    up (a sensor captures ``vb``, what is replayed on ``va``, and injects into ``tls0``).
    ``mtu``: of every veth."""
    ns = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        links = ("va", "vb", "tls0", "tls0peer") if injection else ("va", "vb")
        commands = [["link", "add", "va", "type", "veth", "peer", "name", "vb"]]
        if injection:
            commands += [["link", "add", "tls0", "type", "veth", "peer", "name", "tls0peer"], ["link", "set", "lo", "up"]]
        if mtu is not None:
            commands += [["link", "set", name, "mtu", str(mtu)] for name in links]
        for cmd in commands + [["link", "set", name, "up"] for name in links]:
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        _wait_up(ns, links)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def replay(ns: str, pcap: os.PathLike[str] | str) -> None:
    """The frames of ``pcap`` sent on ``va`` of ``ns`` in order, paced (20 frames, then
    10 ms): none may be dropped or refused."""
    from bridge.capture.pcapfile import read_capture
    from bridge.reinject.outputs import InterfaceOutput

    output = in_netns(ns, lambda: InterfaceOutput("va"))
    for index, frame in enumerate(read_capture(pcap)):
        output.write(frame.timestamp_ns, frame.data)
        if index % 20 == 19:
            time.sleep(0.01)
    output.close()
    assert output.stats.dropped == 0 and output.stats.errors == 0, output.stats


def _wait_up(ns: str, names: tuple[str, ...], timeout: float = 10.0) -> None:
    """Until the links are operationally up: the kernel's link watch activates their
    queueing discipline asynchronously (later on a busy host), and a frame sent before
    that is dropped without an error."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["ip", "-n", ns, "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
        state = {link["ifname"]: (link.get("operstate"), link.get("qdisc")) for link in json.loads(out)}
        if all(state.get(name, ("", ""))[0] == "UP" and state[name][1] != "noop" for name in names):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"links of {ns} not up after {timeout:g} s: {state}")
        time.sleep(0.02)
