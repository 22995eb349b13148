"""`python -m unetile ...` (also what `torchrun -m unetile` runs)."""

import sys

from .cli import main

sys.exit(main())
