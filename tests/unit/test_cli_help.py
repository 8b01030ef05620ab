"""Every sub-command and option of `optimist` explains itself in --help."""

from __future__ import annotations

import argparse

from proxy.cli import build_parser


def parsers(parser: argparse.ArgumentParser, path: str = "optimist"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{path} {name}: sub-command without help"
                yield from parsers(sub, f"{path} {name}")


def test_every_subcommand_and_option_has_help():
    seen = 0
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{path} {name}: no help text"
            seen += 1
    assert seen > 30  # the walk did reach every sub-command's options
