"""``gradcamo --version`` and ``gradcamo --help``: the version installed, every subcommand listed with its help."""

import argparse
import subprocess
import sys

import pytest

from napari_gradcamo import __version__
from napari_gradcamo.cli import build_parser, main


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"gradcamo (napari-gradcamo) {__version__}"


def test_help_lists_every_command_with_its_help(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {action.dest: action.help for action in commands._choices_actions}
    assert set(helps) == set(commands.choices) and len(helps) >= 10
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for name, help_text in helps.items():
        assert help_text, f"'{name}' has no help line"
        assert f"    {name}" in text, f"'gradcamo --help' does not list '{name}'"
    assert "--version" in text


def test_the_console_script_answers_version():
    out = subprocess.run([sys.executable, "-c", "import sys; from napari_gradcamo.cli import main; sys.exit(main())",
                          "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
