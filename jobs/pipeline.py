"""spark-submit entry point of the whole pipeline: jobs/pipeline.py [--conf F] [--as-of D] [--stage S] [--set k=v]."""

import sys

from microseg.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job(None))
