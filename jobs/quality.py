"""spark-submit entry point of the quality stage: jobs/quality.py [--conf F] [--as-of D] [--set k=v ...]."""

import sys

from microseg.cli import run_job
from microseg.quality.stage import run_quality

if __name__ == "__main__":
    sys.exit(run_job(run_quality))
