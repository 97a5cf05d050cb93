#!/usr/bin/env python3
"""Copy the bundled model's trained EAGLE heads into the package, with their checksums.

Run after the documented trainings (docs/eagle.md), which write the heads under
``$SPECDEC_HOME/models/``:

    .venv/bin/python scripts/ship_heads.py "TRAINING COMMANDS"

For each of ``smollm2-135m-eagle`` and ``smollm2-135m-eagle3`` it copies what
vLLM loads (``config.json``, ``model.safetensors``) and the model card
(``README.md``, ``training.json``; the evaluation report as ``evaluation.md``
when there is one) into ``src/specdec/heads/<alias>/``, appends a "Shipped
with specdec" section to the card (the training commands, the weights'
sha256) and writes ``SHA256SUMS``, which ``specdec.models`` checks before it
uses a shipped head.  A head that is not trained is an error: nothing is
shipped half.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from specdec import models
from specdec.files import sha256_file

COPIED = ("config.json", "model.safetensors", "README.md", "training.json")
EVALUATION = ("evaluation/report.md", "evaluation.md")


def ship(alias: str, commands: str, package_heads: Path, note: str = "") -> Path:
    """Copy the trained head ``alias`` into ``package_heads/alias``; return that folder."""
    model = models.bundled(alias)
    if not model.prepared:
        sys.exit(f"ship_heads: {alias} is not trained under {model.path}: train it first "
                 "(docs/eagle.md)")
    source = model.path
    out = package_heads / alias
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in COPIED:
        if not (source / name).is_file():
            sys.exit(f"ship_heads: {source / name} is missing: the training did not finish")
        shutil.copy2(source / name, out / name)
    names = list(COPIED)
    for candidate in EVALUATION:
        if (source / candidate).is_file():
            shutil.copy2(source / candidate, out / "evaluation.md")
            names.append("evaluation.md")
            break
    weights = sha256_file(out / "model.safetensors")
    size = (out / "model.safetensors").stat().st_size
    with (out / "README.md").open("a", encoding="utf-8") as card:
        card.write(
            "\n\n## Shipped with specdec\n\n"
            "This head ships inside the specdec package, so `--strategy "
            f"{'eagle3' if alias.endswith('eagle3') else 'eagle'}` runs on a fresh clone "
            "without training. It was trained on a 2-core CPU by:\n\n"
            f"```bash\n{commands.strip()}\n```\n\n"
            f"`model.safetensors`: {size:,} bytes, sha256 `{weights}`. Every file's sha256 "
            f"is in `{models.CHECKSUMS}`, which specdec checks before it uses the head. "
            "A head you train yourself (same command) is written under `$SPECDEC_HOME` "
            "and wins over this one.\n"
            + (f"\n{note.strip()}\n" if note.strip() else ""))
    sums = "".join(f"{sha256_file(out / name)}  {name}\n" for name in names)
    (out / models.CHECKSUMS).write_text(sums, encoding="utf-8")
    models.shipped_head(models.bundled(alias))  # what specdec will check, checked now
    return out


def main() -> None:
    """Ship both heads and print where each went and its size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commands", help="the training commands, as the card should show them")
    parser.add_argument("--note", default="", help="a paragraph added to the section")
    parser.add_argument("--heads", type=Path, default=models.HEADS,
                        help="the package's heads folder (default: %(default)s)")
    args = parser.parse_args()
    for alias in (models.EAGLE_ALIAS, models.EAGLE3_ALIAS):
        out = ship(alias, args.commands, args.heads, args.note)
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{alias}: {out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
