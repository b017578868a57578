"""The `lifevit` command line edge."""

import subprocess
import sys

from lifevit.cli import build_parser, main


def test_every_subcommand_module_registers_a_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "profile" in sub.choices
    for name, p in sub.choices.items():
        assert p.get_default("func") is not None, f"`lifevit {name}` sets no func"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: lifevit" in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "lifevit", "--help"], capture_output=True, text=True, check=True)
    assert "profile" in out.stdout
