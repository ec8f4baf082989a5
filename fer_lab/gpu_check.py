"""`python -m fer_lab.gpu_check` (`make gpu-check`): the GPU path end to end, timed; see
fer_lab/bench/gpu_check.py."""

import sys

from fer_lab.bench.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
