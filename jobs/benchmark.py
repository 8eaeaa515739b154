"""Benchmark: jobs/benchmark.py [--customers N] [--workdir DIR] [--daily] [--conf F] [--set k=v]; seconds per stage."""

import sys

from microseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
