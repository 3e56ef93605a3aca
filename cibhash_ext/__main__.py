"""``python -m cibhash_ext``: the ``cibhash`` command line."""

import sys

from cibhash_ext.cli import main

sys.exit(main())
