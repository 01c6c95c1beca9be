"""``python -m coserve.cli``: the ``coserve`` command."""

import sys

from coserve.cli import main

sys.exit(main())
