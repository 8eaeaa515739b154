"""spark-submit entry point of the value stage: jobs/value.py [--conf F] [--as-of D] [--set k=v ...]."""

import sys

from microseg.cli import run_job
from microseg.value.stage import run_value

if __name__ == "__main__":
    sys.exit(run_job(run_value))
