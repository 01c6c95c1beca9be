"""Running a script under ``scripts/`` as a command: what a user gets wrong is one line, not a traceback.

A script's ``main`` raises coserve's own errors for bad input (a malformed outcome file, an unknown
expert) and Python's for a file that is not there; ``run_script`` prints either as
``<script>: error: ...`` and exits 2, as argparse does for a bad flag. It knows nothing about what the
scripts measure; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from coserve.errors import CoserveError

__all__ = ["run_script"]

# The file errors a user causes (a mistyped path, a folder given for a file, no permission).
_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def run_script(main: Callable[[], int | None]) -> NoReturn:
    """Exit with ``main()``'s status; a CoserveError or a file error is one line on stderr and status 2."""
    prog = Path(sys.argv[0]).name
    try:
        status = main()
    except CoserveError as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except _FILE_ERRORS as exc:
        print(f"{prog}: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status or 0)
