"""spark-submit entry point of the ingest stage: jobs/ingest.py [--conf F] [--as-of D] [--set k=v ...]."""

import sys

from microseg.cli import run_job
from microseg.ingest.stage import run_ingest

if __name__ == "__main__":
    sys.exit(run_job(run_ingest))
