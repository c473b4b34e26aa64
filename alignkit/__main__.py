"""`python -m alignkit` is the `alignkit` command."""

import sys

from alignkit.cli import main

sys.exit(main())
