"""The seed's batch runner: ``python run_batch.py --configs A.yaml B.yaml --output-base DIR``.

The same as ``specdec batch``; see ``specdec batch --help``.
"""

import sys

from specdec.cli import main

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))
