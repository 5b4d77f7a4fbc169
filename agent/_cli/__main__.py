"""``python -m agent._cli``: the ``shoal`` command."""

import sys

from .main import main

sys.exit(main())
