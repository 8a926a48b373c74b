"""Allows `python -m cc_gpu`, the same entry point as the `cc-gpu` console script."""

import sys

from cc_gpu.cli import main

sys.exit(main())
