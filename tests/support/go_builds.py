"""The Go test server (``tests/support/servers/go_https``) built with Debian's Go
toolchains: go1.19 (bookworm's golang-go) and go1.23 (bookworm-backports'
golang-1.23-go, another pclntab format), static (so it runs in the test guest)
and stripped (``-ldflags=-s -w``: the hook point must come from the pclntab)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import tlslab

GO_SERVER = Path(__file__).resolve().parent / "servers" / "go_https"
GO_123 = "/usr/lib/go-1.23/bin/go"  # golang-1.23-go (bookworm-backports)


def build_go_server(out: Path, name: str, *, release: str = "1.19", stripped: bool = True) -> Path:
    """A static build of the test server at ``out/name``.  Go 1.20+ compiles its standard
    library at the first build: the build cache is kept in ~/.cache/tls-bridge (a cache
    only: the binary is the same without it)."""
    compiler = tlslab.tool("go") if release == "1.19" else GO_123
    assert os.access(compiler, os.X_OK), f"{compiler} is missing: bash scripts/setup.sh installs it"
    out.mkdir(parents=True, exist_ok=True)
    cache = Path.home() / ".cache" / "tls-bridge" / "go-build"
    env = dict(os.environ, HOME=str(out), GOPATH=str(out / "gopath"), GOCACHE=str(cache), GOFLAGS="-mod=mod",
               GOTOOLCHAIN="local", GOPROXY="off", CGO_ENABLED="0")
    flags = ["-ldflags=-s -w"] if stripped else []
    result = subprocess.run([compiler, "build", *flags, "-o", str(out / name), "."], cwd=GO_SERVER, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out / name
