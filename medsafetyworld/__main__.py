"""`python -m medsafetyworld ...` is `msw ...`: for environments (a notebook's kernel) where the
`msw` script is not on PATH."""

import sys

from medsafetyworld.cli import main

sys.exit(main())
