"""`python -m lvmlib ...`: the command line, `lvmlib.app.cli`."""

import sys

from lvmlib.app.cli import main

sys.exit(main())
