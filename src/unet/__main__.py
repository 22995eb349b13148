"""`python -m unet ...` (also what `torchrun -m unet` runs)."""

import sys

from .cli import main

sys.exit(main())
