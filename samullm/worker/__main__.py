"""`python -m samullm.worker`: the guard matters, vLLM starts rank processes with spawn."""

import sys

from samullm.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
