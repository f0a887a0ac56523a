"""`python -m samullm.worker`: the guard matters, vLLM starts rank processes with spawn."""

import os
import sys

from samullm.worker.main import main

if __name__ == "__main__":
    code = main()
    # By now the engine is shut down, its rank processes are gone and every result is fsynced.
    # A normal interpreter exit then spends seconds in torch/vLLM atexit hooks that devices
    # would wait on; end the process at once instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
