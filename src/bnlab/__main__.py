"""``python -m bnlab``: the ``bnlab`` command (also what ``torchrun -m bnlab`` runs)."""
import sys

from .lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
