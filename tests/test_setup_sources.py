"""scripts/apt_sources.py: the archive URI the machine's apt sources use for a
suite (scripts/setup.sh adds bookworm-backports from it), and the set-up
script's step helper: one line per step, the installers' output in the log, the
log's tail when a step fails."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("apt_sources", ROOT / "scripts/apt_sources.py")
apt_sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(apt_sources)  # type: ignore[union-attr]


def _etc(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "etc/apt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_deb822_sources_give_the_uri_of_the_suite_itself_not_of_security_or_a_disabled_stanza(tmp_path):
    root = _etc(tmp_path, {"sources.list.d/debian.sources": (
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/off\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb-src deb\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
    ), "sources.list.d/other.sources.disabled": "Types: deb\nURIs: http://x.invalid\nSuites: bookworm\n"})
    assert apt_sources.suite_uri("bookworm", root) == "http://mirror.invalid/debian"
    assert apt_sources.suite_uri("bookworm-security", root) == "http://mirror.invalid/debian-security"


def test_one_line_sources_with_options_and_sources_list_first(tmp_path):
    root = _etc(tmp_path, {
        "sources.list": "# deb http://commented.invalid bookworm main\n"
                        "deb-src http://src.invalid/debian bookworm main\n"
                        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://one.invalid/debian bookworm main\n",
        "sources.list.d/z.list": "deb http://two.invalid/debian bookworm main\n",
    })
    assert apt_sources.suite_uri("bookworm", root) == "http://one.invalid/debian"


def test_no_source_for_the_suite_is_a_clear_error(tmp_path):
    root = _etc(tmp_path, {"sources.list.d/a.list": "deb http://one.invalid/debian trixie main\n"})
    assert apt_sources.suite_uri("bookworm", root) is None
    result = subprocess.run([sys.executable, str(ROOT / "scripts/apt_sources.py"), "no-such-suite"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert "no apt source for the 'no-such-suite' suite" in result.stderr


def test_this_machine_has_a_bookworm_archive():
    """The set-up script depends on it to add bookworm-backports."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts/apt_sources.py"), "bookworm"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split("://")[0] in ("http", "https", "file", "mirror+file", "mirror+http")


def test_the_archive_host_this_machine_uses_is_written_nowhere_in_the_repository():
    """The host comes from the machine's own apt sources, not from this file."""
    from urllib.parse import urlparse

    host = urlparse(apt_sources.suite_uri("bookworm") or "").hostname
    assert host
    found = subprocess.run(["git", "grep", "-n", "-I", "-F", host], capture_output=True, text=True, cwd=ROOT)
    assert found.returncode == 1 and found.stdout == "", found.stdout


def _step_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """The step helper exactly as scripts/setup.sh defines it, then ``body``."""
    text = (ROOT / "scripts/setup.sh").read_text()
    start = text.index("mkdir -p build\n")
    end = text.index("\n}\n", text.index("step() {")) + 3
    script = tmp_path / "steps.sh"
    script.write_text("set -euo pipefail\n" + text[start:end] + body)
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path)


def test_a_step_shows_one_line_and_logs_the_noise(tmp_path):
    result = _step_script(tmp_path, 'noisy() { for i in $(seq 300); do echo "WARNING: location $i ignored" >&2; done; }\n'
                                    'step "installing things" noisy\necho after\n')
    assert result.returncode == 0
    assert result.stderr == ("setup: the installers' output goes to build/setup.log\n"
                             "setup: installing things ... ok\n")
    assert result.stdout == "after\n"
    assert (tmp_path / "build/setup.log").read_text().count("WARNING: location") == 300


def test_a_failing_step_stops_the_script_and_shows_the_log_tail(tmp_path):
    result = _step_script(tmp_path, 'half() { echo "E: Unable to locate package nosuch"; false; echo not-reached; }\n'
                                    'step "first" true\nstep "installing nosuch" half\necho after\n')
    assert result.returncode == 1
    assert "setup: first ... ok\nsetup: installing nosuch ... FAILED (exit 1)\n" in result.stderr
    assert "build/setup.log" in result.stderr and "  | E: Unable to locate package nosuch" in result.stderr
    assert "not-reached" not in result.stderr + (tmp_path / "build/setup.log").read_text()
    assert "after" not in result.stdout
