"""The compiled code (bridge/engine/_lanes*.{c,h}, bridge/reinject/_segments.c,
bridge/capture/_records.c) under the tools that find what tests miss:

* the lanes' pure C core fuzzed by libFuzzer (coverage-guided, with
  AddressSanitizer and UndefinedBehaviorSanitizer, fuzz/fuzz_lanes.c), seeded with
  the committed captures' frames: zero crashes, zero sanitizer reports;
* the extensions built with AddressSanitizer and UndefinedBehaviorSanitizer and
  loaded by a Python that runs the tests of the compiled code (the committed
  captures through both paths, hypothesis over the C APIs, pcap files, frames from
  a real TPACKET_V3 ring on a veth): zero reports.

clang (with libFuzzer) and gcc's sanitizer runtimes come from scripts/setup.sh;
a missing one fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.fixtures import FIXTURES
from tests.support.flood import Flood

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: scripts/setup.sh installs it"
    return path


def _seed(frames) -> bytes:  # type: ignore[no-untyped-def]
    """Frames in the harness's input format: [linktype selector][length][bytes]."""
    out = bytearray()
    selector = {1: 0, 101: 1, 113: 2, 228: 3, 229: 4, 276: 5}
    for frame in frames:
        data = frame.data[:0xFFFF]
        out += bytes([selector.get(frame.linktype, 0)]) + len(data).to_bytes(2, "big") + data
    return bytes(out)


def test_libfuzzer_finds_nothing_in_the_lanes_core(tmp_path: Path) -> None:
    clang = _tool("clang")
    harness = tmp_path / "fuzz_lanes"
    subprocess.run([clang, "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
                    "-I", str(ROOT / "bridge" / "engine"), str(ROOT / "fuzz" / "fuzz_lanes.c"), "-o", str(harness)],
                   check=True, capture_output=True, text=True)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    count = 0
    for fixture in FIXTURES:
        frames = fixture.frames()
        for start in range(0, len(frames), 4):  # a connection's frames, a few at a time
            (corpus / f"{fixture.name}-{start}").write_bytes(_seed(frames[start:start + 8]))
            count += 1
    flood = Flood()  # the front: SYNs and ClientHellos of connections never answered
    for start in range(0, 12, 3):
        frames = [frame for index in range(start, start + 3) for frame in flood.connection(index, index)]
        (corpus / f"flood-{start}").write_bytes(_seed(frames))
    assert count > 30
    result = subprocess.run([str(harness), "-runs=300000", "-max_len=8192", "-seed=1", str(corpus)],
                            capture_output=True, text=True, timeout=600)
    report = result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "Done 300000 runs" in result.stderr, report
    assert "ERROR:" not in result.stderr and "runtime error" not in result.stderr, report


def test_the_compiled_code_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    gcc = _tool("gcc")
    runtimes = []
    for library in ("libasan.so", "libubsan.so"):
        path = subprocess.run([gcc, f"-print-file-name={library}"], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert os.path.isabs(path) and os.path.exists(path), f"{library}: gcc's sanitizer runtime is missing"
        runtimes.append(os.path.realpath(path))
    # A copy of the package whose extensions are built with the sanitizers.
    build = tmp_path / "asan"
    shutil.copytree(ROOT / "bridge", build / "bridge", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "setup.py", build / "setup.py")
    flags = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"
    env = dict(os.environ, CFLAGS=flags, LDFLAGS="-fsanitize=address,undefined")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=build, env=env, check=True,
                   capture_output=True, text=True)
    built = sorted(str(p.relative_to(build)) for p in (build / "bridge").rglob("*.so"))
    assert len(built) == 3, built
    runner = (
        "import sys\n"
        f"sys.path.insert(0, {str(build)!r})\n"
        "import bridge.engine._lanes, bridge.reinject._segments, bridge.capture._records\n"
        "for module in (bridge.engine._lanes, bridge.reinject._segments, bridge.capture._records):\n"
        f"    assert module.__file__.startswith({str(build)!r}), module.__file__\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--basetemp', sys.argv[1],"
        " 'tests/unit/engine/test_lanes.py', 'tests/unit/engine/test_front.py', 'tests/unit/reinject/test_synthetic.py',"
        " 'tests/unit/engine/test_engine.py', 'tests/test_pcapfile.py', 'tests/test_afpacket.py',"
        " 'tests/unit/capture/test_pcapwriter.py', 'tests/unit/capture/test_records.py']))\n"
    )
    env = dict(os.environ, LD_PRELOAD=" ".join(runtimes),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    result = subprocess.run([sys.executable, "-c", runner, str(tmp_path / "pt")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert "passed" in result.stdout and "failed" not in result.stdout, output
    assert "AddressSanitizer" not in result.stderr and "runtime error" not in result.stderr, output
