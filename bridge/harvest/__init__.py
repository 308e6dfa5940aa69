"""Key harvesting: reading TLS secrets out of process (or guest) memory.

* :mod:`bridge.harvest.elf` — build-ids, exported symbols, uprobe offsets;
* :mod:`bridge.harvest.profile` — per-build struct-offset profiles (JSON);
* :mod:`bridge.harvest.calibrate` (pure search) with its drivers
  :mod:`~bridge.harvest.calibrate_ctypes` (a libssl loaded here) and
  :mod:`~bridge.harvest.calibrate_live` (a running process);
* :mod:`bridge.harvest.chain` — ``SSL → SSL_SESSION`` → secrets with a profile;
* :mod:`bridge.harvest.memory` — ``/proc/PID/mem`` and maps;
* triggers: :mod:`~bridge.harvest.uprobes` (hooks) and
  :mod:`~bridge.harvest.wire_search` (no hook: the client random seen on the wire);
* :mod:`bridge.harvest.process_harvester` — the host-process harvester.
"""
