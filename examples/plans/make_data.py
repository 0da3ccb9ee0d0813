"""Write ``plans.csv``: a small, deterministic three-class data set (synthetic).

``python examples/plans/make_data.py [--seed 5] [--rows 1800] [--out plans.csv]``

One row per sign-up, spread over a year: numeric columns (income, age, visits per
month with some gaps, team size) and categorical ones (device, region), label
``plan`` — the plan the customer chose: ``basic``, ``plus`` or ``premium`` (about
50 / 30 / 20 %). The choice is drawn from a softmax of linear scores of those
columns, so a model does well but not perfectly and the classes overlap.
"""

from __future__ import annotations

import argparse
import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

PLANS = ("basic", "plus", "premium")
DEVICES = ("phone", "tablet", "desktop")
REGIONS = ("north", "south", "east", "west")
START = datetime(2025, 1, 1, tzinfo=UTC)


def rows(seed: int, n: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        device = int(rng.choice(len(DEVICES), p=[0.5, 0.15, 0.35]))
        region = int(rng.integers(len(REGIONS)))
        income = round(float(rng.lognormal(3.9, 0.45)), 1)  # thousands a year
        age = int(rng.integers(18, 75))
        visits = round(float(rng.gamma(2.0, 3.0)), 1)
        team = int(rng.poisson(1.5)) + 1
        scores = np.array(
            [
                2.0,
                -0.6 + 0.05 * (income - 50) + 0.2 * visits + 0.6 * (device == 2),
                -4.0
                + 0.09 * (income - 50)
                + 0.9 * team
                + 1.2 * (device == 2)
                + 0.5 * (region == 0)
                + 0.02 * (age - 40),
            ]
        ) + rng.normal(0, 0.4, 3)
        p = np.exp(scores - scores.max())
        plan = PLANS[int(rng.choice(3, p=p / p.sum()))]
        when = START + timedelta(seconds=int(i / n * 365 * 86400 + rng.integers(3600)))
        out.append(
            {
                "customer_id": f"p{i:05d}",
                "signup_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "income_k": income,
                "age": age,
                "visits_per_month": "" if rng.random() < 0.04 else visits,  # some gaps
                "team_size": team,
                "device": DEVICES[device],
                "region": REGIONS[region],
                "plan": plan,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1800)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("plans.csv"))
    args = parser.parse_args()
    data = rows(args.seed, args.rows)
    with args.out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    shares = {p: sum(r["plan"] == p for r in data) / len(data) for p in PLANS}
    print(
        f"wrote {args.out}: {len(data)} rows, "
        + ", ".join(f"{p} {v:.2f}" for p, v in shares.items())
    )


if __name__ == "__main__":
    main()
