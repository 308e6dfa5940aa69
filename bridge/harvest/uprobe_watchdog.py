"""The uprobe watchdog: removes a harvester's probes when the harvester ends,
however it ends (SIGKILL included).

Started by :class:`~bridge.harvest.uprobes.UprobeSession` with a pipe on its
stdin; the harvester never writes to it.  End of file means the harvester is
gone (or closed the session): remove the probes and the tracing instance.

    python -m bridge.harvest.uprobe_watchdog TRACEFS INSTANCE GROUP
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from bridge.harvest.uprobes import remove_group


def main(argv: list[str]) -> int:
    root, instance, group = argv
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe ends this process
    while sys.stdin.buffer.read(4096):
        pass
    remove_group(Path(root), instance, group)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
