"""The archive URI this machine's apt sources use for a Debian suite.

scripts/setup.sh adds bookworm-backports from the same archive (mirror) the
machine already uses for bookworm, so no host name is written into the
repository and a machine behind its own mirror keeps using it.

Reads ``/etc/apt/sources.list`` and ``/etc/apt/sources.list.d/*.list`` (one-line
format) and ``/etc/apt/sources.list.d/*.sources`` (deb822).  Standard library
only: it runs with the system ``python3`` before the venv exists.

    python3 scripts/apt_sources.py bookworm     # prints the URI, or explains and exits 1
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_ONE_LINE = re.compile(r"^\s*(?P<type>deb|deb-src)\s+(?:\[[^\]]*\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)")


def _one_line_entries(text: str) -> list[tuple[str, str, str]]:
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        match = _ONE_LINE.match(line)
        if match:
            entries.append((match["type"], match["uri"], match["suite"]))
    return entries


def _deb822_entries(text: str) -> list[tuple[str, str, str]]:
    entries = []
    stanzas: list[dict[str, str]] = [{}]
    field = None
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanzas[-1]:
                stanzas.append({})
            field = None
            continue
        if raw[0] in " \t" and field is not None:
            stanzas[-1][field] += " " + raw.strip()
            continue
        name, _, value = raw.partition(":")
        field = name.strip().lower()
        stanzas[-1][field] = value.strip()
    for stanza in stanzas:
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        for kind in stanza.get("types", "").split():
            for uri in stanza.get("uris", "").split():
                for suite in stanza.get("suites", "").split():
                    entries.append((kind, uri, suite))
    return entries


def source_entries(root: Path = Path("/")) -> list[tuple[str, str, str]]:
    """(type, URI, suite) of every source entry, in apt's reading order."""
    etc = root / "etc/apt"
    entries = []
    main = etc / "sources.list"
    if main.is_file():
        entries += _one_line_entries(main.read_text(errors="replace"))
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list" and path.is_file():
                entries += _one_line_entries(path.read_text(errors="replace"))
            elif path.suffix == ".sources" and path.is_file():
                entries += _deb822_entries(path.read_text(errors="replace"))
    return entries


def suite_uri(suite: str, root: Path = Path("/")) -> str | None:
    """The URI of the first binary (``deb``) source of ``suite``, without a trailing slash."""
    for kind, uri, entry_suite in source_entries(root):
        if kind == "deb" and entry_suite.rstrip("/") == suite:
            return uri.rstrip("/")
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 scripts/apt_sources.py SUITE", file=sys.stderr)
        return 2
    suite = argv[0]
    uri = suite_uri(suite)
    if uri is None:
        print(
            f"setup: no apt source for the '{suite}' suite in /etc/apt/sources.list or "
            f"/etc/apt/sources.list.d/*.list|*.sources; {suite}-backports is added from the archive "
            f"used for {suite}. Add {suite}-backports to your apt sources yourself, or a '{suite}' source.",
            file=sys.stderr,
        )
        return 1
    print(uri)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
