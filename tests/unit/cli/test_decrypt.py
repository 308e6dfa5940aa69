"""``tls-bridge decrypt`` (bridge.cli.decrypt): how the command line becomes the engine's settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bridge.cli.decrypt as decrypt_cli
from bridge.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> list:
    """The engines the command builds (the real Engine, recorded)."""
    built: list = []
    real = decrypt_cli.Engine

    def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
        engine = real(*args, **kwargs)
        built.append(engine)
        return engine

    monkeypatch.setattr(decrypt_cli, "Engine", recorded)
    return built


def _decrypt(*extra: str) -> int:
    capture = FIXTURES / "tls13-http1.pcap"
    return main(["decrypt", "-r", str(capture), "--keylog", str(capture.with_suffix(".keylog")), "-q", *extra])


def test_the_summary_says_what_the_compiled_path_took(capsys: pytest.CaptureFixture[str]) -> None:
    capture = FIXTURES / "tls13-http1.pcap"
    arguments = ["decrypt", "-r", str(capture), "--keylog", str(capture.with_suffix(".keylog"))]
    assert main(arguments + ["--fast-path-after", "0"]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.endswith("; compiled path: 16 of the 24 TCP frames, 4 records"), summary  # test_lanes' counts
    assert main(arguments + ["--no-fast-path"]) == 0
    assert "compiled path" not in capsys.readouterr().err


def test_the_sha256_is_computed_only_for_a_flow_log(engines: list, tmp_path: Path) -> None:
    """Without --flows nothing would read the SHA-256 of the plaintext: none is computed
    (it costs about what decrypting does); with --flows it is, unless --no-digest."""
    flows = tmp_path / "flows.jsonl"
    assert _decrypt("--flows", str(flows)) == 0
    record = json.loads(flows.read_text().splitlines()[0])
    assert engines[-1].decryptor.config.digest
    assert record["status"] == "decrypted" and len(record["s2c"]["sha256"]) == 64

    assert _decrypt("-w", str(tmp_path / "out.pcap")) == 0
    assert not engines[-1].decryptor.config.digest
    assert (tmp_path / "out.pcap").stat().st_size > 24

    assert _decrypt("--flows", str(flows), "--no-digest") == 0
    assert not engines[-1].decryptor.config.digest
    assert json.loads(flows.read_text().splitlines()[0])["s2c"]["sha256"] is None
