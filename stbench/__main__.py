"""``python -m stbench``: the same as the ``stbench`` command."""

import sys

from stbench.cli import main

sys.exit(main())
