"""spark-submit entry point of the profile stage: jobs/profiles.py [--conf F] [--as-of D] [--set k=v ...].

Named profiles.py because a script folder holding profile.py would hide Python's own profile module.
"""

import sys

from microseg.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("profile"))
