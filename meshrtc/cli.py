"""`meshrtc` command line. Each subcommand lives in `meshrtc/commands/<name>.py` and exposes
`register(subparsers)`, which adds its parser and sets `func` (a callable taking the parsed
namespace and returning an exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys

from shared.config import ConfigError

COMMANDS = ["dev", "serve", "token", "db", "room", "participant", "webhooks", "usage", "node", "cluster", "lab",
            "stats"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshrtc", description="meshrtc: multi-home WebRTC speaking LiveKit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"meshrtc.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"meshrtc.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"meshrtc: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
