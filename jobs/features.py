"""spark-submit entry point of the features stage: jobs/features.py [--conf F] [--as-of D] [--set k=v ...]."""

import sys

from microseg.cli import run_job
from microseg.features.stage import run_features

if __name__ == "__main__":
    sys.exit(run_job(run_features))
