"""`python -m fer_lab.bench`: see fer_lab/bench/runner.py."""

from fer_lab.bench.runner import main

main()
