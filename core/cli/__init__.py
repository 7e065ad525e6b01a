"""Command line for the engine: `python -m core --help`. With --json a command prints one JSON object on stdout;
without it, text (core/cli/render.py), with progress and streamed answers on stderr/stdout as a person expects.

Built on transformers' HfArgumentParser: it is argparse underneath, so usage messages, `--help` and exit codes
(2 for usage errors) are argparse's own, and it turns a settings dataclass into flags, so each setting is declared
once (core/schema.py) for the CLI and the UI alike. Each command is one function in core/cli/commands.py or core/cli/training_commands.py."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from core.errors import LabError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def build_parser() -> argparse.ArgumentParser:
    from transformers import HfArgumentParser

    import core.cli.commands  # noqa: F401 - registers the commands
    import core.cli.training_commands  # noqa: F401
    import core.cli.study_commands  # noqa: F401
    import core.cli.model_commands  # noqa: F401
    from core.cli.registry import COMMANDS, GROUPS, TOP_LEVEL

    def new_parser(**kwargs):
        return HfArgumentParser(formatter_class=argparse.HelpFormatter, **kwargs)

    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser = new_parser(prog="python -m core", description="RAG & Fine-Tune Lab engine.")
    groups = {(): parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                        parser_class=HfArgumentParser)}
    for spec in sorted(COMMANDS, key=lambda c: TOP_LEVEL.index(c.path[0])):
        parent_path, name = spec.path[:-1], spec.path[-1]
        if parent_path not in groups:  # a group such as `kb`: its parser holds the actions
            help_text, description = GROUPS[parent_path]
            group = groups[()].add_parser(parent_path[0], help=help_text, description=description,
                                          formatter_class=argparse.HelpFormatter)
            groups[parent_path] = group.add_subparsers(dest=f"{parent_path[0]}_command", required=True,
                                                       metavar="ACTION", parser_class=HfArgumentParser)
        p = groups[parent_path].add_parser(name, help=spec.help, description=spec.description or spec.help,
                                           parents=[json_flag], dataclass_types=list(spec.settings),
                                           formatter_class=argparse.HelpFormatter)
        for flags, options in spec.arguments:
            p.add_argument(*flags, **options)
        p.set_defaults(spec=spec)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    from core.cli.registry import Output
    from core.lab import Lab

    out = Output(args.json)
    try:
        result = args.spec.run(Lab(), args, out)
        payload, code = result if isinstance(result, tuple) else (result, EXIT_OK)
        if args.json:
            print_json(payload)
        elif args.spec.render:
            args.spec.render(payload, args)
        return code
    except LabError as exc:
        if args.json:
            print_json({"error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
