"""`coserve ... | head`: a reader that leaves early ends the command quietly, as a pipeline expects."""

from __future__ import annotations

import os
import subprocess
import sys

_RUN = "import sys; from coserve.cli import main; sys.exit(main(sys.argv[1:]))"


def test_a_closed_output_pipe_ends_the_command_without_a_traceback() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`) has gone before the command writes
    try:
        run = subprocess.run(
            [sys.executable, "-c", _RUN, "keys", "hash", "sk-my-secret-key"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (run.returncode, run.stderr) == (141, "")
