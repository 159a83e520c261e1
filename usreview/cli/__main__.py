"""``python -m usreview.cli``: the ``usreview`` command."""

import sys

from usreview.cli import main

sys.exit(main())
