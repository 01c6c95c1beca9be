"""The ``coserve`` command: serve | init | route | chat | map | experts | keys | log | bench | outcomes |
check-data | compare | eval | train | plan | deploy.

Each command lives in a module of this package beside its parser: ``serving`` (serve, route,
chat), ``experts`` (experts, keys, log), ``bench``, ``measure`` (outcomes, compare, map),
``train`` (eval, train), ``scored`` (eval-trained), ``check_data`` (check-data), ``plan`` and ``cluster``
(deploy, serve --ray),
``init`` (a copy of the default library to edit). Commands parse and print;
the work is done by the package's other modules. Arguments are parsed in ``main()``; nothing runs
at import time. Errors a user can fix (a bad library file, a missing model package) print one line
and exit with status 2; a closed output pipe (``coserve log | head``) ends the command quietly with 141.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from coserve.cli.bench import add_bench_parser
from coserve.cli.cascade import add_train_check_parser
from coserve.cli.check_data import add_check_data_parser
from coserve.cli.cluster import add_deploy_parser
from coserve.cli.experts import add_experts_parser, add_keys_parser, add_log_parser, cmd_experts
from coserve.cli.init import add_init_parser
from coserve.cli.measure import add_compare_parser, add_map_parser, add_outcomes_parser
from coserve.cli.plan import add_plan_arguments
from coserve.cli.scored import add_eval_trained_parser
from coserve.cli.serving import add_chat_parser, add_route_parser, add_serve_parser, cmd_route, cmd_serve
from coserve.cli.train import add_eval_parser, add_train_parser
from coserve.errors import CoserveError

__all__ = ["build_parser", "cmd_experts", "cmd_route", "cmd_serve", "main"]

# In the order ``coserve --help`` lists them.
_COMMANDS = (
    add_serve_parser,
    add_init_parser,
    add_route_parser,
    add_chat_parser,
    add_map_parser,
    add_experts_parser,
    add_keys_parser,
    add_log_parser,
    add_bench_parser,
    add_outcomes_parser,
    add_check_data_parser,
    add_compare_parser,
    add_eval_parser,
    add_eval_trained_parser,
    add_train_parser,
    add_train_check_parser,
    add_plan_arguments,
    add_deploy_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coserve", description="A Composition of Experts behind one endpoint.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser in _COMMANDS:
        add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = ["coserve", *(sys.argv[1:] if argv is None else argv)]  # recorded beside figures
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a reader that has gone (`coserve log | head`) shows here, not at exit
        return status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141  # as a command stopped by SIGPIPE: 128 + 13, no traceback
    except CoserveError as exc:
        print(f"coserve: error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the command cannot read or write: the system's reason, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"coserve: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
