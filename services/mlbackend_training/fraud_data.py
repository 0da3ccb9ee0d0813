"""Synthetic card transactions for the fraud case study, deterministic by seed.

Users have a profile (age, sign-up time, home region) and hidden habits (how often
they pay, how much, how often they travel, whether they like risky merchants).
Merchants belong to categories, a few of them risky. Ordinary spending follows a
daily rhythm with few transactions at night.

On top of it, *episodes* reproduce the known fraud patterns. Each episode's label is
drawn at random, and the legitimate draws of every pattern are look-alikes made from
overlapping distributions, so no single signal gives the label away:

==================  ==============================================  =========================
pattern             fraud draw                                      legitimate look-alike
==================  ==============================================  =========================
``card_testing``    burst of tiny payments, often far away, at      micro-payment sessions
                    night, then sometimes a cash-out                (games, transit, vending)
``spree``           > 100 card tests, then several cash-outs of     a busy day of a trading
                    > 10,000, mostly young victims                  account with a big buy
``amount_spike``    a few payments far above the user's habit       a rare big purchase
``night_risky``     gambling / crypto / gift cards at night         night owls
``far_from_home``   payments in a distant region                    travel
``new_account``     accounts that spend fast on risky merchants,    new users who shop in
                    then go silent                                  their first days
``noise``           a few ordinary-looking payments are fraud       (everything else)
==================  ==============================================  =========================

The original rule scorer's signals (amount > 10,000, user age < 25, many
transactions in a day) therefore occur in both classes. The ``scenario`` column
names the generating pattern for analysis only: it must never be a feature.

Times are UTC epoch seconds and, for simplicity, every region lives in UTC.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

DAY = 86_400
HOUR = 3_600

# 2025-01-01T00:00:00Z
DEFAULT_START = 1_735_689_600

# name, merchant share, prior fraud risk (domain knowledge, never fitted on labels),
# amount multiplier against a user's typical payment
CATEGORIES: tuple[tuple[str, float, float, float], ...] = (
    ("grocery", 0.20, 0.02, 1.0),
    ("restaurant", 0.18, 0.03, 0.8),
    ("fuel", 0.09, 0.03, 1.0),
    ("retail", 0.15, 0.04, 1.5),
    ("pharmacy", 0.05, 0.02, 0.7),
    ("travel", 0.06, 0.08, 5.0),
    ("online_services", 0.08, 0.10, 0.6),
    ("electronics", 0.06, 0.15, 4.0),
    ("gift_cards", 0.03, 0.35, 0.8),
    ("crypto", 0.03, 0.40, 3.0),
    ("gambling", 0.04, 0.30, 1.5),
    ("jewelry", 0.03, 0.25, 6.0),
)
CATEGORY_NAMES: tuple[str, ...] = tuple(c[0] for c in CATEGORIES)
CATEGORY_RISK: dict[str, float] = {c[0]: c[2] for c in CATEGORIES}
RISKY_CATEGORIES: frozenset[str] = frozenset(n for n, _, risk, _ in CATEGORIES if risk >= 0.25)

# region, latitude, longitude, share of home regions
REGIONS: tuple[tuple[str, float, float, float], ...] = (
    ("us-east", 40.7, -74.0, 0.22),
    ("us-southeast", 33.7, -84.4, 0.14),
    ("us-central", 41.9, -87.6, 0.16),
    ("us-south", 32.8, -96.8, 0.12),
    ("us-mountain", 39.7, -105.0, 0.07),
    ("us-west", 34.0, -118.2, 0.15),
    ("us-northwest", 47.6, -122.3, 0.08),
    ("uk", 51.5, -0.1, 0.06),
    ("ng", 6.5, 3.4, 0.0),
    ("sg", 1.35, 103.8, 0.0),
)
REGION_NAMES: tuple[str, ...] = tuple(r[0] for r in REGIONS)
# A payment this far from the user's home region counts as far from home.
FAR_FROM_HOME_KM = 1_500.0

# Relative transaction intensity per hour of the day: quiet nights, busy evenings.
HOURLY_RHYTHM = np.array(
    [0.8, 0.5, 0.35, 0.3, 0.3, 0.5, 1.2, 2.5, 4.0, 4.5, 5.0, 5.5,
     6.5, 6.0, 5.0, 4.8, 5.0, 5.8, 6.5, 6.5, 5.5, 4.0, 2.6, 1.5],
)  # fmt: skip
HOURLY_P: NDArray[np.float64] = HOURLY_RHYTHM / HOURLY_RHYTHM.sum()


def _region_distances() -> NDArray[np.float64]:
    lat = np.radians([r[1] for r in REGIONS])
    lon = np.radians([r[2] for r in REGIONS])
    dlat = lat[:, None] - lat[None, :]
    dlon = lon[:, None] - lon[None, :]
    a = np.sin(dlat / 2) ** 2 + np.cos(lat[:, None]) * np.cos(lat[None, :]) * np.sin(dlon / 2) ** 2
    return np.asarray(2 * 6371.0 * np.arcsin(np.sqrt(a)), dtype=np.float64)


REGION_DISTANCE_KM: NDArray[np.float64] = _region_distances()


@dataclass(frozen=True)
class FraudDataConfig:
    """Size, seed and pattern rates of a generated data set.

    Episode rates are per 1,000 user-days, so a larger data set keeps the same mix.
    """

    n_users: int = 2_000
    n_days: int = 60
    n_merchants: int = 400
    seed: int = 7
    start: int = DEFAULT_START
    mean_daily_transactions: float = 1.0
    new_account_share: float = 0.12
    fraudulent_new_account_share: float = 0.2
    card_testing_rate: float = 0.6
    spree_rate: float = 0.08
    amount_spike_rate: float = 2.0
    night_risky_rate: float = 1.5
    far_from_home_rate: float = 1.2
    noise_fraud_probability: float = 0.0015

    def __post_init__(self) -> None:
        if self.n_users < 10 or self.n_days < 7 or self.n_merchants < 2 * len(CATEGORIES):
            raise ValueError(
                f"need at least 10 users, 7 days and {2 * len(CATEGORIES)} merchants, "
                f"got {self.n_users}, {self.n_days}, {self.n_merchants}"
            )

    @property
    def end(self) -> int:
        return self.start + self.n_days * DAY


@dataclass(frozen=True)
class UserProfiles:
    """One entry per user, index ``i`` is user ``user_id[i]``."""

    user_id: NDArray[np.str_]
    age: NDArray[np.int64]
    signup_ts: NDArray[np.int64]
    home_region: NDArray[np.str_]

    def __len__(self) -> int:
        return len(self.user_id)


@dataclass(frozen=True)
class Transactions:
    """Columnar transactions sorted by ``timestamp`` (then ``transaction_id``).

    ``user_index`` indexes :class:`UserProfiles`; ``scenario`` is for analysis only.
    """

    transaction_id: NDArray[np.str_]
    user_id: NDArray[np.str_]
    user_index: NDArray[np.int64]
    merchant_id: NDArray[np.str_]
    category: NDArray[np.str_]
    amount: NDArray[np.float64]
    timestamp: NDArray[np.int64]
    region: NDArray[np.str_]
    is_fraud: NDArray[np.int8]
    scenario: NDArray[np.str_]

    def __len__(self) -> int:
        return len(self.transaction_id)

    def take(self, rows: NDArray[np.intp] | NDArray[np.bool_]) -> Transactions:
        return Transactions(**{k: v[rows] for k, v in self.columns().items()})

    def columns(self) -> dict[str, NDArray[Any]]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def to_rows(self) -> list[dict[str, Any]]:
        """Row-wise view: one plain dict per transaction (for writing events)."""
        cols = {k: v.tolist() for k, v in self.columns().items()}
        return [dict(zip(cols, values, strict=True)) for values in zip(*cols.values(), strict=True)]


@dataclass(frozen=True)
class FraudDataset:
    config: FraudDataConfig
    users: UserProfiles
    transactions: Transactions
    merchant_category: dict[str, str] = field(repr=False)

    @property
    def fraud_rate(self) -> float:
        return float(self.transactions.is_fraud.mean()) if len(self.transactions) else 0.0

    def digest(self) -> str:
        """sha256 over every generated column (identifies the data set)."""
        h = hashlib.sha256()
        for name, col in self.transactions.columns().items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(col).tobytes())
        return h.hexdigest()


@dataclass
class _Hidden:
    """Per-user habits the generator uses but nobody observes directly."""

    daily_rate: NDArray[np.float64]
    typical_amount: NDArray[np.float64]
    travel_share: NDArray[np.float64]
    risky_regular: NDArray[np.bool_]
    home: NDArray[np.int64]
    active_from: NDArray[np.int64]
    fraudulent_account: NDArray[np.bool_]


class _Merchants:
    def __init__(self, rng: np.random.Generator, n: int) -> None:
        shares = np.array([c[1] for c in CATEGORIES])
        # every category gets at least one merchant, the rest by share
        cats = np.concatenate(
            [np.arange(len(CATEGORIES)), rng.choice(len(CATEGORIES), n - len(CATEGORIES), p=shares)]
        )
        self.category = cats
        self.popularity = rng.pareto(1.2, n) + 1.0
        self.ids = np.array([f"m{i:05d}" for i in range(n)])
        self.by_category = [np.flatnonzero(cats == c) for c in range(len(CATEGORIES))]

    def pick(self, rng: np.random.Generator, n: int, categories: Sequence[str]) -> NDArray[np.intp]:
        """``n`` merchants of the given categories (uniform over them), by popularity."""
        cat_idx = np.array([CATEGORY_NAMES.index(c) for c in categories])
        chosen_cat = cat_idx[rng.integers(0, len(cat_idx), n)]
        out = np.empty(n, dtype=np.intp)
        for c in np.unique(chosen_cat):
            rows = np.flatnonzero(chosen_cat == c)
            pool = self.by_category[c]
            p = self.popularity[pool] / self.popularity[pool].sum()
            out[rows] = rng.choice(pool, len(rows), p=p)
        return out


@dataclass
class _Columns:
    """Transactions under construction (before sorting and id assignment)."""

    user: list[NDArray[np.int64]] = field(default_factory=list)
    ts: list[NDArray[np.int64]] = field(default_factory=list)
    merchant: list[NDArray[np.intp]] = field(default_factory=list)
    amount: list[NDArray[np.float64]] = field(default_factory=list)
    region: list[NDArray[np.int64]] = field(default_factory=list)
    fraud: list[NDArray[np.int8]] = field(default_factory=list)
    scenario: list[NDArray[np.str_]] = field(default_factory=list)

    def add(
        self,
        user: int | NDArray[np.int64],
        ts: NDArray[np.int64],
        merchant: NDArray[np.intp],
        amount: NDArray[np.float64],
        region: int | NDArray[np.int64],
        fraud: int | NDArray[np.int8],
        scenario: str,
    ) -> None:
        n = len(ts)
        self.user.append(np.broadcast_to(np.asarray(user, dtype=np.int64), n).copy())
        self.ts.append(np.asarray(ts, dtype=np.int64))
        self.merchant.append(np.asarray(merchant, dtype=np.intp))
        rounded = np.round(np.maximum(np.asarray(amount, dtype=np.float64), 0.5), 2)
        self.amount.append(rounded.astype(np.float64))
        self.region.append(np.broadcast_to(np.asarray(region, dtype=np.int64), n).copy())
        self.fraud.append(np.broadcast_to(np.asarray(fraud, dtype=np.int8), n).copy())
        self.scenario.append(np.full(n, scenario))


def generate(config: FraudDataConfig | None = None) -> FraudDataset:
    """Generate users, merchants and labelled transactions for ``config``."""
    cfg = config or FraudDataConfig()
    rng = np.random.default_rng(cfg.seed)
    merchants = _Merchants(rng, cfg.n_merchants)
    users, hidden = _users(rng, cfg)
    cols = _Columns()
    _ordinary(rng, cfg, hidden, merchants, cols)
    _new_accounts(rng, cfg, hidden, merchants, cols)
    _episodes(rng, cfg, users, hidden, merchants, cols)
    return _assemble(cfg, users, merchants, cols)


def _users(rng: np.random.Generator, cfg: FraudDataConfig) -> tuple[UserProfiles, _Hidden]:
    n = cfg.n_users
    young = rng.random(n) < 0.25
    age = np.where(
        young, rng.integers(18, 25, n), np.clip(rng.normal(45, 14, n), 25, 85).astype(np.int64)
    ).astype(np.int64)
    is_new = rng.random(n) < cfg.new_account_share
    existing_signup = cfg.start - (30 + rng.exponential(3 * 365, n)) * DAY
    new_signup = cfg.start + rng.random(n) * (cfg.n_days - 3) * DAY
    signup = np.where(is_new, new_signup, existing_signup).astype(np.int64)
    home_p = np.array([r[3] for r in REGIONS])
    home = rng.choice(len(REGIONS), n, p=home_p / home_p.sum()).astype(np.int64)
    fraudulent = is_new & (rng.random(n) < cfg.fraudulent_new_account_share)
    sigma = 0.6
    daily_rate = cfg.mean_daily_transactions * rng.lognormal(-(sigma**2) / 2, sigma, n)
    daily_rate[fraudulent] *= 0.05  # they stop using the account after cashing out
    typical = rng.lognormal(np.log(40.0), 0.7, n)
    wealthy = rng.random(n) < 0.04
    typical[wealthy] *= rng.uniform(10, 30, wealthy.sum())
    hidden = _Hidden(
        daily_rate=daily_rate,
        typical_amount=typical,
        travel_share=rng.beta(1.2, 40, n),
        risky_regular=rng.random(n) < 0.08,
        home=home,
        active_from=np.maximum(signup, cfg.start),
        fraudulent_account=fraudulent,
    )
    users = UserProfiles(
        user_id=np.array([f"u{i:06d}" for i in range(n)]),
        age=age,
        signup_ts=signup,
        home_region=np.array(REGION_NAMES)[home],
    )
    return users, hidden


def _times_on_days(
    rng: np.random.Generator, cfg: FraudDataConfig, earliest: NDArray[np.int64], n: int
) -> NDArray[np.int64]:
    """Random times in ``[earliest, end)`` following the daily rhythm."""
    span = (cfg.end - earliest).astype(np.float64)
    raw = earliest + (rng.random(n) * span).astype(np.int64)
    midnight = cfg.start + (raw - cfg.start) // DAY * DAY
    hour = rng.choice(24, n, p=HOURLY_P)
    ts = midnight + hour * HOUR + rng.integers(0, HOUR, n)
    return np.asarray(np.maximum(ts, earliest), dtype=np.int64)


def _ordinary(
    rng: np.random.Generator,
    cfg: FraudDataConfig,
    hidden: _Hidden,
    merchants: _Merchants,
    cols: _Columns,
) -> None:
    active_days = (cfg.end - hidden.active_from) / DAY
    counts = rng.poisson(hidden.daily_rate * active_days)
    user = np.repeat(np.arange(cfg.n_users, dtype=np.int64), counts)
    n = len(user)
    ts = _times_on_days(rng, cfg, hidden.active_from[user], n)
    # ordinary merchants by popularity; risky-category regulars like risky merchants more
    risky_merchant = np.isin(
        merchants.category, [CATEGORY_NAMES.index(c) for c in RISKY_CATEGORIES]
    )
    base_p = merchants.popularity * np.where(risky_merchant, 0.25, 1.0)
    regular_p = merchants.popularity * np.where(risky_merchant, 3.0, 1.0)
    regular = hidden.risky_regular[user]
    merchant = np.empty(n, dtype=np.intp)
    merchant[~regular] = rng.choice(len(base_p), int((~regular).sum()), p=base_p / base_p.sum())
    merchant[regular] = rng.choice(len(base_p), int(regular.sum()), p=regular_p / regular_p.sum())
    cat_mult = np.array([c[3] for c in CATEGORIES])[merchants.category[merchant]]
    amount = hidden.typical_amount[user] * cat_mult * rng.lognormal(0.0, 0.45, n)
    big = rng.random(n) < 0.004  # the occasional big purchase of an honest user
    amount[big] *= rng.uniform(8, 30, big.sum())
    travelling = rng.random(n) < hidden.travel_share[user]
    region = np.where(travelling, rng.integers(0, len(REGIONS), n), hidden.home[user])
    fraud = (rng.random(n) < cfg.noise_fraud_probability).astype(np.int8)
    cols.add(user, ts, merchant, amount, region, fraud, "ordinary")


def _far_region(rng: np.random.Generator, home: int) -> int:
    far = np.flatnonzero(REGION_DISTANCE_KM[home] > FAR_FROM_HOME_KM)
    return int(rng.choice(far))


def _new_accounts(
    rng: np.random.Generator,
    cfg: FraudDataConfig,
    hidden: _Hidden,
    merchants: _Merchants,
    cols: _Columns,
) -> None:
    """First days of new accounts: fraudulent ones cash out, honest ones shop."""
    new_users = np.flatnonzero(hidden.active_from > cfg.start)
    risky = ["electronics", "gift_cards", "crypto", "jewelry", "gambling"]
    honest = ["electronics", "gift_cards", "travel", "jewelry", "gambling", "retail"]
    for u in new_users:
        fraudulent = bool(hidden.fraudulent_account[u])
        if not fraudulent and rng.random() > 0.5:
            continue
        k = int(rng.integers(3, 11) if fraudulent else rng.integers(2, 9))
        start = int(hidden.active_from[u]) + int(
            rng.uniform(0.05, 4.0 if fraudulent else 5.0) * DAY
        )
        ts = start + np.cumsum(rng.exponential(3 * HOUR if fraudulent else 5 * HOUR, k)).astype(
            np.int64
        )
        merchant = merchants.pick(rng, k, risky if fraudulent else honest)
        amount = rng.lognormal(np.log(450 if fraudulent else 320), 0.8, k)
        far = rng.random() < (0.3 if fraudulent else 0.15)
        region = _far_region(rng, int(hidden.home[u])) if far else int(hidden.home[u])
        cols.add(int(u), ts, merchant, amount, region, int(fraudulent), "new_account")


def _episode_count(rng: np.random.Generator, cfg: FraudDataConfig, rate: float) -> int:
    return int(rng.poisson(rate * cfg.n_users * cfg.n_days / 1000.0))


def _episodes(
    rng: np.random.Generator,
    cfg: FraudDataConfig,
    users: UserProfiles,
    hidden: _Hidden,
    merchants: _Merchants,
    cols: _Columns,
) -> None:
    young = users.age < 25
    # fraud episodes target established accounts, young ones about twice as often
    eligible = ~hidden.fraudulent_account & (hidden.active_from < cfg.end - 2 * DAY)
    victim_w = eligible * np.where(young, 2.0, 1.0)
    victim_p = victim_w / victim_w.sum()
    young_pool = np.flatnonzero(young & eligible)
    old_pool = np.flatnonzero(~young & eligible)

    def episode_start(u: int, night: bool) -> int:
        earliest = int(hidden.active_from[u]) + DAY
        day = cfg.start + int(rng.integers((earliest - cfg.start) // DAY + 1, cfg.n_days)) * DAY
        hour = int(rng.integers(0, 5)) if night else int(rng.choice(24, p=HOURLY_P))
        return max(earliest, day + hour * HOUR + int(rng.integers(0, HOUR)))

    def victim() -> int:
        return int(rng.choice(len(victim_p), p=victim_p))

    def home(u: int) -> int:
        return int(hidden.home[u])

    for _ in range(_episode_count(rng, cfg, cfg.card_testing_rate)):
        u, fraud = victim(), int(rng.random() < 0.55)
        night = rng.random() < (0.35 if fraud else 0.2)
        start = episode_start(u, night)
        k = int(np.clip(rng.lognormal(np.log(10 if fraud else 9), 0.6), 3, 60))
        gaps = rng.exponential(30 if fraud else 45, k)
        ts = start + np.cumsum(gaps).astype(np.int64)
        cats = ["online_services", "gift_cards"]
        if not fraud:
            cats.append("restaurant")
        amount = rng.uniform(0.5, 6.0 if fraud else 9.0, k)
        far = rng.random() < (0.3 if fraud else 0.15)
        region = _far_region(rng, home(u)) if far else home(u)
        cols.add(u, ts, merchants.pick(rng, k, cats), amount, region, fraud, "card_testing")
        if fraud and rng.random() < 0.55:
            m = int(rng.integers(1, 3))
            out_ts = int(ts[-1]) + np.cumsum(rng.uniform(0.5, 3.0, m) * HOUR).astype(np.int64)
            out_amount = hidden.typical_amount[u] * rng.uniform(10, 40, m)
            picks = merchants.pick(rng, m, ["electronics", "jewelry", "gift_cards", "crypto"])
            cols.add(u, out_ts, picks, out_amount, region, 1, "card_testing")

    for _ in range(_episode_count(rng, cfg, cfg.spree_rate)):
        fraud = int(rng.random() < 0.6)
        pool = young_pool if rng.random() < (0.85 if fraud else 0.5) else old_pool
        u = int(rng.choice(pool))
        start = episode_start(u, night=bool(rng.random() < (0.3 if fraud else 0.15)))
        k = int(rng.integers(101, 131))
        hours = rng.uniform(2, 10) if fraud else rng.uniform(6, 16)
        ts = start + np.sort(rng.random(k) * hours * HOUR).astype(np.int64)
        cats = ["online_services", "gift_cards"]
        if not fraud:
            cats += ["retail", "restaurant"]
        amount = rng.uniform(0.5, 8.0, k) if fraud else rng.lognormal(np.log(9), 0.7, k)
        far = rng.random() < (0.3 if fraud else 0.08)
        region = _far_region(rng, home(u)) if far else home(u)
        cols.add(u, ts, merchants.pick(rng, k, cats), amount, region, fraud, "spree")
        m = int(rng.integers(3, 6)) if fraud else int(rng.random() < 0.7) * int(rng.integers(1, 4))
        if m:
            out_ts = int(ts[-1]) + np.cumsum(rng.uniform(0.1, 1.0, m) * HOUR).astype(np.int64)
            out_amount = rng.lognormal(np.log(16_000 if fraud else 12_000), 0.45, m)
            picks = merchants.pick(rng, m, ["jewelry", "electronics", "crypto", "travel"])
            cols.add(u, out_ts, picks, out_amount, region, fraud, "spree")

    for _ in range(_episode_count(rng, cfg, cfg.amount_spike_rate)):
        u, fraud = victim(), int(rng.random() < 0.55)
        start = episode_start(u, night=bool(fraud and rng.random() < 0.3))
        k = int(rng.integers(1, 4))
        ts = start + np.cumsum(rng.uniform(10, 120, k) * 60).astype(np.int64)
        scale = hidden.typical_amount[u] * rng.lognormal(np.log(15 if fraud else 10), 0.6, k)
        cats = (
            ["electronics", "jewelry", "travel", "gift_cards"]
            if fraud
            else ["travel", "electronics", "retail", "jewelry"]
        )
        far = rng.random() < (0.5 if fraud else 0.15)
        region = _far_region(rng, home(u)) if far else home(u)
        cols.add(u, ts, merchants.pick(rng, k, cats), scale, region, fraud, "amount_spike")

    for _ in range(_episode_count(rng, cfg, cfg.night_risky_rate)):
        u, fraud = victim(), int(rng.random() < 0.5)
        start = episode_start(u, night=True)
        k = int(rng.integers(1, 5))
        ts = start + np.cumsum(rng.uniform(2, 40, k) * 60).astype(np.int64)
        amount = hidden.typical_amount[u] * rng.lognormal(np.log(4 if fraud else 2), 0.6, k)
        far = rng.random() < (0.3 if fraud else 0.05)
        region = _far_region(rng, home(u)) if far else home(u)
        picks = merchants.pick(rng, k, ["gambling", "crypto", "gift_cards"])
        cols.add(u, ts, picks, amount, region, fraud, "night_risky")

    for _ in range(_episode_count(rng, cfg, cfg.far_from_home_rate)):
        u, fraud = victim(), int(rng.random() < 0.35)
        start = episode_start(u, night=bool(fraud and rng.random() < 0.3))
        k = int(rng.integers(1, 4))
        ts = start + np.cumsum(rng.uniform(15, 180, k) * 60).astype(np.int64)
        amount = hidden.typical_amount[u] * rng.lognormal(np.log(5 if fraud else 2), 0.6, k)
        cats = (
            ["electronics", "jewelry", "retail", "gift_cards", "restaurant"]
            if fraud
            else ["travel", "restaurant", "retail", "fuel"]
        )
        region = _far_region(rng, home(u))
        cols.add(u, ts, merchants.pick(rng, k, cats), amount, region, fraud, "far_from_home")


def _assemble(
    cfg: FraudDataConfig, users: UserProfiles, merchants: _Merchants, cols: _Columns
) -> FraudDataset:
    user = np.concatenate(cols.user)
    ts = np.concatenate(cols.ts)
    keep = ts < cfg.end
    # stable sort by time: ties keep generation order, which is deterministic by seed
    order = np.argsort(ts[keep], kind="stable")

    def col(parts: Sequence[NDArray[Any]]) -> NDArray[Any]:
        return np.concatenate(parts)[keep][order]

    user = user[keep][order]
    merchant = col(cols.merchant)
    n = len(user)
    transactions = Transactions(
        transaction_id=np.array([f"t{i:08d}" for i in range(n)]),
        user_id=users.user_id[user],
        user_index=user,
        merchant_id=merchants.ids[merchant],
        category=np.array(CATEGORY_NAMES)[merchants.category[merchant]],
        amount=col(cols.amount),
        timestamp=ts[keep][order],
        region=np.array(REGION_NAMES)[col(cols.region)],
        is_fraud=col(cols.fraud).astype(np.int8),
        scenario=col(cols.scenario),
    )
    merchant_category = {
        str(mid): CATEGORY_NAMES[c]
        for mid, c in zip(merchants.ids, merchants.category, strict=True)
    }
    return FraudDataset(cfg, users, transactions, merchant_category)
