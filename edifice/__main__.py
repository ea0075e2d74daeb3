"""``python -m edifice`` runs the same command line as the ``edifice`` script."""

import sys

from edifice.cli import main

if __name__ == "__main__":
    sys.exit(main())
