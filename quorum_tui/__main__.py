import sys

from quorum_tui.cli import main

sys.exit(main())
