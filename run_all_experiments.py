"""The seed's comprehensive runner: ``python run_all_experiments.py STUDY.yaml``.

Expands a study file (models x strategies x sweeps x repeats) into a batch and
runs it, as ``specdec study``; see ``specdec study --help`` and docs/studies.md.
"""

import sys

from specdec.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
