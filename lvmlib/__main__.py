"""`python -m lvmlib ...` — see lvmlib/cli.py."""

import sys

from lvmlib.app.cli import main

sys.exit(main())
