"""Write docs/cli.md from the parsers themselves, so the reference cannot drift.

    PYTHONPATH=. python -m flashbits.crosscheck.cli_docs > docs/cli.md
"""

from __future__ import annotations

import argparse
import os

from .cli import CROSSCHECK_DESC, _add_crosscheck_args, build_parser

INTRO = """# Command-line reference

Generated from the parsers by `python -m flashbits.crosscheck.cli_docs` (a test checks it is
current). Two console scripts: `flashbits` (subcommands below) and `crosscheck`
(the same as `flashbits crosscheck`); and `python -m flashbits.crosscheck.records`,
which regenerates and installs the golden hardware records.
"""


def _help(parser) -> str:
    os.environ["COLUMNS"] = "100"
    return parser.format_help().rstrip()


def render() -> str:
    ap = build_parser()
    parts = [INTRO, "## flashbits", "", "```", _help(ap), "```", ""]
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        parts += [f"## flashbits {name}", "", "```", _help(p), "```", ""]
    cc = argparse.ArgumentParser(prog="crosscheck", description=CROSSCHECK_DESC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_crosscheck_args(cc)
    parts += ["## crosscheck", "", "```", _help(cc), "```", ""]
    from .records import build_parser as records_parser

    rp = records_parser()
    parts += ["## python -m flashbits.crosscheck.records", "",
              "Regenerate every golden record on the GPU, install them here (docs/hardware.md).", ""]
    sub = next(a for a in rp._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        parts += [f"### records {name}", "", "```", _help(p), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render())
