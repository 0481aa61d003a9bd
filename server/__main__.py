"""``python -m evserve.server`` runs the CLI."""

import sys

from evserve.server.cli import main

sys.exit(main())
