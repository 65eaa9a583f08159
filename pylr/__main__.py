"""``python -m pylr``: the same as the ``pylr`` command."""

import sys

from pylr.cli import main

sys.exit(main())
