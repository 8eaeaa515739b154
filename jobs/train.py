"""spark-submit entry point of the train stage: jobs/train.py [--conf F] [--as-of D] [--set k=v ...]."""

import sys

from microseg.cli import run_job
from microseg.segmentation.stage import run_train

if __name__ == "__main__":
    sys.exit(run_job(run_train))
