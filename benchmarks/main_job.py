"""How long the main job takes after set-up, against the 6-minute target.

Runs ``scripts/main.sh`` with no arguments, as a new user would after set-up: the
quick study (``studies/quick.yaml``: baseline, ngram, the truncated draft and the
shipped EAGLE head on two prompts per category of the sample benchmark) into a
new folder, and times it end to end.  ``scripts/setup.sh`` runs first, untimed
(set-up is not part of the target); with ``--fresh-home`` the bundled models are
prepared inside the timed part, in a new ``SPECDEC_HOME``, as on a fresh machine.
Prints the time of each phase the job logs (model preparation, each study item,
the scoring pass, the report), whether the verdict table was printed, and the
verdict against the target.  Run it on an idle machine.

    .venv/bin/python benchmarks/main_job.py                 # models already prepared
    .venv/bin/python benchmarks/main_job.py --fresh-home    # preparation included
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 6 * 60.0
PHASES = (
    ("bundled model ready", "model prepared"),
    ("batch item started", "item started"),
    ("scoring pass started", "scoring pass started"),
    ("report:", "report printed"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh-home", action="store_true",
                        help="prepare the bundled models in a new SPECDEC_HOME, timed")
    parser.add_argument("--keep", type=Path, help="keep the study folder here")
    args = parser.parse_args()

    subprocess.run([str(ROOT / "scripts" / "setup.sh")], check=True)  # noqa: S603
    with tempfile.TemporaryDirectory(prefix="specdec-main-job-") as tmp:
        out = args.keep or Path(tmp) / "quick"
        if out.exists():
            sys.exit(f"main_job: {out} exists; the job would resume it, not run it: remove it")
        env = dict(os.environ, SPECDEC_MAIN_OUTPUT=str(out), COLUMNS="100")
        if args.fresh_home:
            env["SPECDEC_HOME"] = str(Path(tmp) / "home")
        started = time.monotonic()
        marks: list[tuple[float, str]] = []
        lines: list[str] = []
        with subprocess.Popen([str(ROOT / "scripts" / "main.sh")], cwd=ROOT, env=env,  # noqa: S603
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as job:
            assert job.stdout is not None
            for line in job.stdout:
                sys.stdout.write(line)
                lines.append(line)
                for needle, label in PHASES:
                    if needle in line:
                        item = re.search(r"item=(\S+)", line)
                        marks.append((time.monotonic() - started,
                                      f"{label} {item.group(1) if item else ''}".strip()))
        elapsed = time.monotonic() - started
    text = "".join(lines)
    print("\n== main job timing ==")
    for at, label in marks:
        print(f"{at:7.1f} s  {label}")
    verdict = "verdict (overall" in text and "verdict:" in text
    print(f"exit status: {job.returncode}")
    print(f"verdict table printed: {'yes' if verdict else 'NO'}")
    print(f"total: {elapsed:.0f} s ({elapsed / 60:.1f} min) against a target of "
          f"{TARGET_S / 60:.0f} min: {'met' if elapsed <= TARGET_S else 'NOT met'}"
          f"{' (models prepared inside it)' if args.fresh_home else ''}")
    return 0 if job.returncode == 0 and verdict else 1


if __name__ == "__main__":
    sys.exit(main())
