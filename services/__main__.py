"""``python -m logmesh``: the same command as ``logmesh``."""

import sys

from logmesh.cli.main import main

sys.exit(main())
