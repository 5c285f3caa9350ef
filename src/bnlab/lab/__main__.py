"""``python -m bnlab.lab``: the same as the ``bnlab`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
