"""spark-submit entry point of the ingest stage: jobs/ingest.py [--conf F] [--as-of D] [--set k=v ...]."""

import sys

from microseg.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("ingest"))
