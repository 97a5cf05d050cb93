"""How often the sampled lossless check raises a false alarm, and what it can detect.

Synthetic multinomial samples only (no engine), so the figures are the test's
own, measured where the truth is known:

    .venv/bin/python benchmarks/sampled_lossless_calibration.py

It prints three markdown tables for docs/lossless.md:

1. one cell's false-alarm rate at alpha 0.05 (pooled chi-square), for three
   next-token shapes and three sample sizes, 10,000 tables each;
2. a whole comparison's family-wise false-alarm rate (Holm over 8 prompts x
   4 prefix lengths, and the 4 combined cells), 500 comparisons per sample
   size, nothing differing;
3. the smallest TV one prompt's cell detects with 80% power at the first step
   of Holm over those 36 cells (alpha / 36), per shape and sample size.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from specdec.sampled_lossless import ALPHA, chi_square, compare_arms, detectable_tv, pool


def zipf(size: int, exponent: float) -> np.ndarray:
    """A Zipf-like next-token distribution."""
    weights = 1 / np.arange(1, size + 1) ** exponent
    result: np.ndarray = weights / weights.sum()
    return result


SHAPES = {
    "confident (top 0.6, Zipf tail of 20)": np.r_[0.6, 0.4 * zipf(20, 1.0)],
    "long tail (Zipf 1.1 over 50)": zipf(50, 1.1),
    "sharp (Zipf 2 over 10)": zipf(10, 2.0),
}


def band(rate: float, trials: int) -> str:
    """A rate with its binomial standard error."""
    return f"{rate:.3f} +- {math.sqrt(rate * (1 - rate) / trials):.3f}"


def cell_size(sizes: tuple[int, ...], trials: int, seed: int) -> list[str]:
    """Table 1's rows."""
    rng = np.random.default_rng(seed)
    rows = ["| shape | " + " | ".join(f"n = {n}" for n in sizes) + " |",
            "| --- |" + " --- |" * len(sizes)]
    for name, p in SHAPES.items():
        cells = []
        for n in sizes:
            pooled = pool(rng.multinomial(n, p, size=trials), rng.multinomial(n, p, size=trials))
            rate = float(np.mean(chi_square(pooled.baseline, pooled.candidate)[2] <= ALPHA))
            cells.append(band(rate, trials))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def family_size(sizes: tuple[int, ...], comparisons: int, seed: int) -> list[str]:
    """Table 2's rows: 8 prompts, 4 positions drawn from the shapes in turn."""
    rng = np.random.default_rng(seed)
    positions = [*SHAPES.values(), zipf(30, 1.5)]
    rows = ["| samples per arm | comparisons | family-wise false alarms |", "| --- | --- | --- |"]
    for n in sizes:
        alarms = 0
        for _ in range(comparisons):
            arms = []
            for _arm in range(2):
                arm = {}
                for prompt in range(8):
                    columns = [rng.choice(len(p), size=n, p=p) for p in positions]
                    arm[f"p{prompt}"] = [tuple(int(c[i]) for c in columns) for i in range(n)]
                arms.append(arm)
            alarms += compare_arms(arms[0], arms[1], length=4, simulations=0,
                                   resamples=0).detected
        rows.append(f"| {n} | {comparisons} | {band(alarms / comparisons, comparisons)} |")
    return rows


def power(sizes: tuple[int, ...], seed: int) -> list[str]:
    """Table 3's rows."""
    rows = ["| shape | " + " | ".join(f"n = {n}" for n in sizes) + " |",
            "| --- |" + " --- |" * len(sizes)]
    for name, p in SHAPES.items():
        cells = []
        for n in sizes:
            found, _at, largest = detectable_tv([p], [(n, n)], level=ALPHA / 36, seed=seed)
            cells.append(f"{found:.3f}" if found is not None else f"none (up to {largest:.2f})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    """Print the three tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--comparisons", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = (100, 300, 1000)
    print("\n".join(cell_size(sizes, args.trials, args.seed)), end="\n\n")
    print("\n".join(family_size((100, 300), args.comparisons, args.seed)), end="\n\n")
    print("\n".join(power(sizes, args.seed)))


if __name__ == "__main__":
    main()
