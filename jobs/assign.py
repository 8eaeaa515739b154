"""spark-submit entry point of the assign stage: jobs/assign.py [--conf F] [--as-of D] [--set k=v ...]."""

import sys

from microseg.cli import run_job
from microseg.outputs.assign import run_assign

if __name__ == "__main__":
    sys.exit(run_job(run_assign))
