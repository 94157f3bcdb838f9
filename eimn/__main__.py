"""``python -m eimn``: the same command line as the ``eimn`` console script."""
import sys

from .cli import main

sys.exit(main())
