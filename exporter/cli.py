"""Command line: `serve` (the default), `demo`, `check` (probe once and exit) and `discover`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from exporter import logsetup
from exporter.errors import ConfigError
from exporter.flags import build_parser, deprecated_spellings


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(args_list)
    logsetup.setup(args.log_level, getattr(args, "log_file", None), getattr(args, "log_format", "text"))
    old = deprecated_spellings(parser)
    for used in dict.fromkeys(a.partition("=")[0] for a in args_list if a.partition("=")[0] in old):
        logging.getLogger("exporter").warning(
            "flag %s is deprecated: use %s (the old spelling goes in the next release)", used, old[used]
        )
    try:
        if args.command == "service":
            from exporter.commands.service import run_service_command

            return run_service_command(args.action, args.serve_args)
        if args.command == "discover":
            from exporter.commands.discover import run_discover

            return run_discover(args)
        from exporter import settings

        checked = settings.from_args(args)  # every flag checked here, before anything starts
        if checked.command == "check":
            from exporter.commands.check import run_check

            return run_check(checked)
        from exporter.commands.serve import run_serve

        return run_serve(checked)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
