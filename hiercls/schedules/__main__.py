"""``python -m hiercls.schedules plot ...``: see :mod:`hiercls.schedules.plot`."""

import sys

from hiercls.schedules.plot import main

sys.exit(main())
