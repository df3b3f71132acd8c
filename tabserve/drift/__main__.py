import sys

from tabserve.drift.report import main

sys.exit(main())
