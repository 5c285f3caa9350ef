"""``python -m bnlab.lab.data``: the same commands as ``bnlab data`` (see :mod:`.cli`)."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m bnlab.lab.data"))
