import sys

from tabserve.batch.cli import main

sys.exit(main())
