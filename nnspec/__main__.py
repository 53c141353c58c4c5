"""`python -m nnspec`: the `nnspec` command, for environments without its script on PATH."""

import sys

from nnspec.cli import INTERRUPTED, main

try:
    main(prog_name="nnspec")
except KeyboardInterrupt:  # between the imports and the first command
    sys.exit(INTERRUPTED)
