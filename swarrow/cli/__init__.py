"""The `swarrow` command line: one module per command, registered here (the one place to add one).

Each command parses, calls library functions and maps their errors to exit codes (`swarrow.exits`);
shared pieces live in `params` (value types, common options), `help` (man-page help), `errors`
(`CliError`), `imports` (`module:callable`) and `bootstrap` (logging, event loop, connection).
"""

from swarrow.cli.app import cli, main
from swarrow.cli.call import call
from swarrow.cli.consume import consume
from swarrow.cli.dead import dead
from swarrow.cli.declare import declare
from swarrow.cli.errors import CliError
from swarrow.cli.imports import import_callable
from swarrow.cli.jobs import jobs
from swarrow.cli.publish import publish
from swarrow.exits import EXIT_BROKER, EXIT_CODES, EXIT_CRASH, EXIT_IMPORT, EXIT_OK, EXIT_USAGE

# The commands, in `swarrow --help` order: a new command is a new module plus one line here.
for _command in (consume, declare, publish, call, dead, jobs):
    cli.add_command(_command)

__all__ = [
    "EXIT_BROKER",
    "EXIT_CODES",
    "EXIT_CRASH",
    "EXIT_IMPORT",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "cli",
    "import_callable",
    "main",
]
