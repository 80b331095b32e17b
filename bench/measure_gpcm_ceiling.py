"""What the generated synthetic_OC lets any model reach: the generating GPCM's own scores, over data seeds.

The generator knows every student's ability and every question's discrimination and thresholds; its most
probable category at each position (`models.gpcm.data`, ``oracle``) is the Bayes-optimal predictor of the exact
category, so its categorical accuracy is what no trained model beats in expectation, and its QWK is the level a
well-trained model approaches. This prints both on the eval split (and the train split) for --seeds generator
seeds at a preset's data settings, then their minimum, median and maximum:

    python bench/measure_gpcm_ceiling.py --preset seed --seeds 20

A figure quoted above the maximum (seed 000's 69.2% categorical accuracy at its standard 3 epochs) did not come
from data drawn like these.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from harness.config import parse_overrides
from harness.registry import get, resolve
from models.gpcm.workload import ORACLE_METRICS, oracle_metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="seed")
    ap.add_argument("--seeds", type=int, default=20, help="generator seeds data_seed = 0 .. N-1 (default 20)")
    ap.add_argument("knobs", nargs="*", help="key=value data settings on top of the preset")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        print(f"error: --seeds={args.seeds}; use 1 or more", file=sys.stderr)
        return 2
    wl = get("gpcm")
    try:
        base = {"preset": args.preset, **parse_overrides(args.knobs)}
        resolve("gpcm", base)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows: dict[str, list[float]] = {f"{split} {m}": [] for split in ("eval", "train") for m in ORACLE_METRICS}
    print(f"{'data_seed':>9}  " + "  ".join(f"{k:>34}" for k in rows))
    for seed in range(args.seeds):
        cfg = resolve("gpcm", {**base, "data_seed": seed})
        train, evaluation = wl.build_datasets(cfg)
        values = [oracle_metrics(ds, cfg)[m] for ds in (evaluation, train) for m in ORACLE_METRICS]
        for key, value in zip(rows, values, strict=True):
            rows[key].append(value)
        print(f"{seed:>9}  " + "  ".join(f"{v:>34.4f}" for v in values))
    for what, fn in (("min", min), ("median", statistics.median), ("max", max)):
        print(f"{what:>9}  " + "  ".join(f"{fn(v):>34.4f}" for v in rows.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
