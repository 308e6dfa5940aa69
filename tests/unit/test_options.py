"""Options declared once (bridge.options): the same checks on the command line and in TOML."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from bridge.options import add_arguments, check, from_arguments, option


@dataclass
class Example:
    """An example."""

    size: int = option(10, "a size", low=1, high=100, flag="--size")
    ratio: float = option(0.5, "a ratio", low=0, flag="--ratio")
    enabled: bool = option(True, "on", negate="--off")
    name: str = option("x", "not on the command line")


def test_values_are_checked_against_their_declaration():
    size, ratio, enabled, name = fields(Example)
    assert check(size, 5) == (5, None)
    assert "from 1 to 100" in check(size, 500)[1]
    assert "an integer" in check(size, True)[1]
    assert check(ratio, 2) == (2.0, None)
    assert "true or false" in check(enabled, "yes")[1]
    assert "a string" in check(name, 3)[1]


def test_flags_from_the_declaration(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    assert from_arguments(Example, parser.parse_args([])) == Example()
    assert from_arguments(Example, parser.parse_args(["--size", "20", "--off"]), name="y") == Example(20, 0.5, False, "y")
    with pytest.raises(SystemExit):
        parser.parse_args(["--size", "0"])
    assert "expected a value from 1 to 100" in capsys.readouterr().err
