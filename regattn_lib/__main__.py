"""``python -m regattn_lib``: the command line (``regattn_lib.apps.cli``)."""

import sys

from regattn_lib.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
