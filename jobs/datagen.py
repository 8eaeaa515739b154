"""spark-submit entry point of the generator: jobs/datagen.py [--customers N] [--seed S] [--out DIR] [--next-day]."""

import sys

from microseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["datagen", *sys.argv[1:]]))
