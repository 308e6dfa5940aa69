"""Which mapped binaries hold a key-log function we hook, by library
(:mod:`bridge.harvest.golang`, :mod:`bridge.harvest.gnutls`)."""

from __future__ import annotations

from bridge.harvest import gnutls, golang
from bridge.harvest.elf import ElfImage
from bridge.harvest.keylog_hooks import KeyLogBinary


def may_hold_hook_point(path: str, exe: str) -> bool:
    """A mapped file worth inspecting: the executable (Go links statically) or a
    library we hook by its name."""
    return path == exe or gnutls.is_libgnutls(path)


def find_hook_points(path: str, image: ElfImage) -> list[KeyLogBinary]:
    """Every library's key-log hook point in one mapped binary (empty: none we hook).
    Raises ProfileError for a binary of a library we know that cannot be hooked."""
    points = []
    go = golang.inspect(path, image)
    if go is not None:
        points.append(KeyLogBinary(path, go.build_id, go.library, golang.WRITE_KEY_LOG, go.offset,
                                   golang.PROBE_ARGS, golang.decode))
    if gnutls.is_libgnutls(path):
        point = gnutls.hook_point(path, image)
        if point is not None:
            points.append(point)
    return points
