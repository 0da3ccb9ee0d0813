"""Write ``churn.csv``: a small, deterministic customer-churn data set (synthetic).

``python examples/churn/make_data.py [--seed 11] [--rows 2400] [--out churn.csv]``

One row per customer snapshot, spread over a year: numeric columns (tenure, monthly
charges, support calls, data usage with some gaps) and categorical ones (contract,
payment method, region), label ``churned`` (yes/no, ~20 % yes). Churn is drawn from a
logistic model of those columns plus noise, so a model does well but not perfectly.
"""

from __future__ import annotations

import argparse
import csv
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

CONTRACTS = ("month-to-month", "one-year", "two-year")
PAYMENTS = ("card", "bank-transfer", "invoice")
REGIONS = ("north", "south", "east", "west")
START = datetime(2025, 1, 1, tzinfo=UTC)


def rows(seed: int, n: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        contract = rng.choice(len(CONTRACTS), p=[0.55, 0.25, 0.20])
        payment = rng.choice(len(PAYMENTS), p=[0.5, 0.3, 0.2])
        region = rng.integers(len(REGIONS))
        tenure = int(rng.gamma(2.0, 12.0)) + 1
        charges = round(float(rng.normal(55 + 15 * (contract == 0), 18)), 2)
        calls = int(rng.poisson(1.2 + 0.8 * (contract == 0)))
        usage = round(float(rng.lognormal(2.5, 0.6)), 1)
        logit = (
            -2.5
            + 1.3 * (contract == 0)
            - 0.9 * (contract == 2)
            - 0.035 * tenure
            + 0.018 * (charges - 55)
            + 0.45 * calls
            + 0.5 * (payment == 2)
            + 0.3 * (region == 1)
            + rng.normal(0, 0.6)
        )
        churned = rng.random() < 1 / (1 + math.exp(-logit))
        when = START + timedelta(seconds=int(i / n * 365 * 86400 + rng.integers(3600)))
        out.append(
            {
                "customer_id": f"c{i:05d}",
                "snapshot_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "tenure_months": tenure,
                "monthly_charges": charges,
                "support_calls": calls,
                "data_usage_gb": "" if rng.random() < 0.05 else usage,  # some gaps
                "contract": CONTRACTS[contract],
                "payment_method": PAYMENTS[payment],
                "region": REGIONS[region],
                "churned": "yes" if churned else "no",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--rows", type=int, default=2400)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("churn.csv"))
    args = parser.parse_args()
    data = rows(args.seed, args.rows)
    with args.out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    rate = sum(r["churned"] == "yes" for r in data) / len(data)
    print(f"wrote {args.out}: {len(data)} rows, churn rate {rate:.3f}")


if __name__ == "__main__":
    main()
