"""The ``borrowcore`` command: one subcommand per capability, each a thin call into the package.

Each command's flags and handler live together, grouped by the layer they call into: ``models.py``,
``data.py``, ``evaluation.py``, ``engine.py``, ``deploy.py``.
"""

from __future__ import annotations

import argparse
import sys

from borrowcore.cli import data, deploy, engine, evaluation, models


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="borrowcore", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # in the order ``borrowcore --help`` lists them
    for add in (models.add_summary, models.add_anchors, engine.add_train, evaluation.add_eval, engine.add_ablate,
                evaluation.add_diagnose, evaluation.add_analyze, evaluation.add_compare, deploy.add_bench,
                data.add_convert, data.add_shift, engine.add_release, engine.add_table, data.add_synth,
                data.add_stats, deploy.add_predict, deploy.add_export):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:  # our clear errors: no traceback for the user
        print(f"borrowcore {args.command}: error: {error}", file=sys.stderr)
        return 2

