import sys

from samullm.cli import main

sys.exit(main())
