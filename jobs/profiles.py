"""spark-submit entry point of the profile stage: jobs/profiles.py [--conf F] [--as-of D] [--set k=v ...].

Named profiles.py because a script folder holding profile.py would hide Python's own profile module.
"""

import sys

from microseg.cli import run_job
from microseg.outputs.profiles import run_profile

if __name__ == "__main__":
    sys.exit(run_job(run_profile))
