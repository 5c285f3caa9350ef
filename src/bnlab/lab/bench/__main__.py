"""``python -m bnlab.lab.bench`` = ``bnlab bench``."""
import sys

from .cli import main

sys.exit(main())
