"""`python -m lvmlib ...` — see lvmlib/cli.py."""
import sys

from .cli import main

sys.exit(main())
