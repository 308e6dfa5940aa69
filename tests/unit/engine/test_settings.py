"""The engine's settings, declared once: every one reachable from the command line
and from the sensor's TOML file, checked the same way in both."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from bridge.cli import build_parser
from bridge.engine.settings import EngineSettings
from bridge.options import from_arguments
from bridge.sensor.config import ConfigError, load_config, render_defaults


SOURCES = ["capture.interfaces=['eth1']", "keys.keylogs=['/run/keys.log']"]


def _config(overrides=()):  # type: ignore[no-untyped-def]
    return load_config(None, [*SOURCES, *overrides])


def _decrypt(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["decrypt", "-r", "x.pcap", *flags])


def test_every_setting_has_a_flag_and_a_toml_key():
    help_text = build_parser()._subparsers._group_actions[0].choices["decrypt"].format_help()  # type: ignore[union-attr]
    defaults = render_defaults()
    for spec in fields(EngineSettings):
        flag = spec.metadata.get("flag") or spec.metadata.get("negate")
        assert flag and flag in help_text, spec.name
        assert f"\n{spec.name} = " in defaults, spec.name


def test_the_defaults_are_one_declaration():
    assert from_arguments(EngineSettings, _decrypt()) == EngineSettings()
    assert _config().decrypt == EngineSettings()


def test_flags_and_toml_set_the_same_fields():
    args = _decrypt("--key-wait", "5", "--max-flows", "1000", "--max-out-of-order", "65536", "--max-pending",
                    "1048576", "--max-pending-total", "8388608", "--recently-closed", "10", "--rst-grace", "0.5",
                    "--keep-keys", "--idle-timeout", "60")
    from_cli = from_arguments(EngineSettings, args)
    overrides = [f"decrypt.{name}={value}" for name, value in (
        ("key_wait", 5.0), ("max_flows", 1000), ("max_out_of_order_bytes", 65536), ("max_pending_per_direction", 1048576),
        ("max_pending_total", 8388608), ("recently_closed", 10), ("rst_grace", 0.5), ("forget_keys", "false"),
        ("idle_timeout", 60.0))]
    assert _config(overrides).decrypt == from_cli
    assert from_cli.forget_keys is False and from_cli.max_pending_total == 8388608


def test_out_of_bounds_is_refused_by_both(capsys):
    with pytest.raises(SystemExit):
        _decrypt("--max-flows", "3")
    assert "--max-flows: expected a value from 16" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"\[decrypt\] max_flows: expected a value from 16"):
        _config(["decrypt.max_flows=3"])


def test_the_memory_budget_and_the_flood_summary_from_flags_and_toml(capsys):
    from bridge.outputs.flowlog import FlowLogSettings

    args = _decrypt("--memory-limit", "268435456", "--evict-idle", "5", "--never-completed", "each",
                    "--never-completed-sample", "3", "--never-completed-servers", "7")
    config = _config(["decrypt.memory_limit=268435456", "decrypt.evict_idle=5", "output.never_completed='each'",
                      "output.never_completed_sample=3", "output.never_completed_servers=7"])
    assert from_arguments(EngineSettings, args) == config.decrypt
    assert from_arguments(FlowLogSettings, args) == FlowLogSettings(**{
        spec.name: getattr(config.output, spec.name) for spec in fields(FlowLogSettings)})
    with pytest.raises(SystemExit):
        _decrypt("--memory-limit", "1000")
    assert "--memory-limit: expected a value from 1.00663e+08" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"\[decrypt\] memory_limit: expected a value from"):
        _config(["decrypt.memory_limit=1000"])
    with pytest.raises(SystemExit):
        _decrypt("--never-completed", "drop")
    assert "invalid choice: 'drop'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"\[output\] never_completed: expected one of summary, each"):
        _config(["output.never_completed='drop'"])


def test_a_budget_that_leaves_too_little_for_connections_is_refused_by_both(capsys):
    from bridge.cli import main

    assert main(["decrypt", "-r", "x.pcap", "--memory-limit", "100663296", "--recently-closed", "200000"]) == 2
    assert "leaves less than 16 MiB for connections" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"\[decrypt\] memory_limit 100,663,296 bytes leaves less than 16 MiB"):
        _config(["decrypt.memory_limit=100663296", "decrypt.recently_closed=200000"])
