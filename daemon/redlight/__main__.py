"""``python -m redlight``."""

import sys

from redlight.cli import main

sys.exit(main())
