"""spark-submit entry point of the clean stage: jobs/clean.py [--conf F] [--as-of D] [--set k=v ...]."""

import sys

from microseg.clean.stage import run_clean
from microseg.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(run_clean))
