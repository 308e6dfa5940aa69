"""Which mapped binaries hold a key-log function we hook, by library
(:mod:`bridge.harvest.golang`, :mod:`bridge.harvest.gnutls`,
:mod:`bridge.harvest.boringssl`)."""

from __future__ import annotations

import re

from bridge.harvest import boringssl, gnutls, golang
from bridge.harvest.elf import ElfImage
from bridge.harvest.keylog_hooks import KeyLogBinary

#: Shared objects that never embed a TLS library we hook this way (OpenSSL's own are read by layout).
_NOT_EMBEDDING = re.compile(r"/(?:libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libz|"
                            r"libssl|libcrypto|libpython[\d.]*)\.so[^/]*$")


def may_hold_hook_point(path: str, exe: str) -> bool:
    """A mapped file worth inspecting: the executable (Go, or BoringSSL linked in),
    a libgnutls, or another shared object (BoringSSL linked in: gRPC's modules)."""
    if path == exe or gnutls.is_libgnutls(path):
        return True
    return ".so" in path.rsplit("/", 1)[-1] and not _NOT_EMBEDDING.search(path)


def find_hook_points(path: str, image: ElfImage, cache_dir: str | None = None) -> list[KeyLogBinary]:
    """Every library's key-log hook point in one mapped binary (empty: none we hook);
    ``cache_dir`` keeps what loading a library taught (GnuTLS).  Raises ProfileError
    for a binary of a library we know that cannot be hooked."""
    points = []
    go = golang.inspect(path, image)
    if go is not None:
        points.append(KeyLogBinary(path, go.build_id, go.library, golang.WRITE_KEY_LOG, go.offset,
                                   golang.PROBE_ARGS, golang.decode))
    if gnutls.is_libgnutls(path):
        point = gnutls.hook_point(path, image, cache_dir)
        if point is not None:
            points.append(point)
    elif go is None:
        point = boringssl.hook_point(path, image)
        if point is not None:
            points.append(point)
    return points
