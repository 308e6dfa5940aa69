"""The compiled code (bridge/engine/_lanes*.{c,h}, bridge/reinject/_segments.c,
bridge/capture/_records*.{c,h}) under the tools that find what tests miss:

* the lanes' pure C core fuzzed by libFuzzer (coverage-guided, with
  AddressSanitizer and UndefinedBehaviorSanitizer, fuzz/fuzz_lanes.c), seeded with
  the committed captures' frames: zero crashes, zero sanitizer reports;
* the capture readers' pure C core (pcap record headers, TPACKET_V3 blocks,
  fuzz/fuzz_records.c) likewise, seeded with the committed captures' records and
  ring blocks as the kernel lays them out;
* the synthetic frames' pure C core (headers, the checksum: fuzz/fuzz_segments.c)
  likewise, every frame checked against a checksum computed byte by byte;
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
from tests.support.rings import tpacket_v3_block

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


def _libfuzzer(tmp_path: Path, name: str, include: str, corpus: Path, runs: int) -> None:
    """fuzz/NAME.c built with libFuzzer, ASan and UBSan (the core's headers in bridge/INCLUDE)
    and run ``runs`` times from ``corpus``: no crash, no sanitizer report."""
    harness = tmp_path / name
    subprocess.run([_tool("clang"), "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
                    "-I", str(ROOT / "bridge" / include), str(ROOT / "fuzz" / f"{name}.c"), "-o", str(harness)],
                   check=True, capture_output=True, text=True)
    result = subprocess.run([str(harness), f"-runs={runs}", "-max_len=8192", "-seed=1", str(corpus)],
                            capture_output=True, text=True, timeout=600)
    report = result.stderr[-3000:]
    assert result.returncode == 0, report
    assert f"Done {runs} runs" in result.stderr, report
    assert "ERROR:" not in result.stderr and "runtime error" not in result.stderr, report


def test_libfuzzer_finds_nothing_in_the_lanes_core(tmp_path: Path) -> None:
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
    _libfuzzer(tmp_path, "fuzz_lanes", "engine", corpus, 300000)


def test_libfuzzer_finds_nothing_in_the_capture_readers_core(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    count = 0
    for fixture in FIXTURES:  # [options][snaplen][block offset][the records after the file header]
        data = fixture.pcap.read_bytes()
        little = data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
        nanosecond = data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        options = (1 if little else 0) | (4 if nanosecond else 0) | 8
        for start in range(24, min(len(data), 24 + 4 * 2048), 2048):
            (corpus / f"{fixture.name}-{start}").write_bytes(bytes([options, 0xFF, 0xFF, 0, 0]) + data[start:start + 4096])
            count += 1
        frames = [(1_700_000_000, index, frame.data[:600], 0x11 if index % 2 else 0x51, 42, 0x88A8)
                  for index, frame in enumerate(fixture.frames()[:5])]
        (corpus / f"{fixture.name}-ring").write_bytes(bytes([0, 0x01, 0x00, 0, 0]) + tpacket_v3_block(frames, size=4096))
        count += 1
    assert count > 10
    _libfuzzer(tmp_path, "fuzz_records", "capture", corpus, 1000000)


def test_libfuzzer_finds_nothing_in_the_synthetic_frames_core(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # [options][link header length][mss][seq][ip id][addresses, link header][payload]: IPv4 and IPv6,
    # Ethernet with and without an 802.1Q tag, MSS 1460 and 8960, odd and even payloads
    addresses = bytes(range(1, 33))
    for index, (options, link, mss, size) in enumerate([(0, 14, 1460, 3001), (1, 18, 1440, 2000), (2, 14, 8960, 9001),
                                                        (3, 14, 100, 777), (0, 0, 536, 1)]):
        header = bytes([options, link]) + mss.to_bytes(2, "big") + (0xFFFFFF00 + index).to_bytes(4, "big") + b"\x12\x34"
        (corpus / f"seed-{index}").write_bytes(header + addresses + bytes((i * 7) & 0xFF for i in range(size)))
    _libfuzzer(tmp_path, "fuzz_segments", "reinject", corpus, 200000)


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
