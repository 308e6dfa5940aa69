#!/usr/bin/env bash
# The main job on an embedded default: a real TLS session decrypted live, re-injected
# as cleartext, and what Suricata (and Zeek, where installed) saw inside it.  Set-up is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tls-bridge demo "$@"
