"""Entry point of the guest: `python3 run.py --tier legacy|iommufd --results /out/results.json`.

Kept apart from harness.py so the case modules and this script share one imported harness (and one case list).
"""

import sys

import cases_iommufd  # registers its cases
import cases_legacy  # registers its cases
import harness

del cases_iommufd, cases_legacy
sys.exit(harness.main(sys.argv[1:]))
