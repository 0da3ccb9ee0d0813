"""Declarative transforms: values, null propagation, output schema, definition errors."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from mlbackend_features.core.model import (
    Bucketize,
    Cell,
    Clip,
    DayOfWeek,
    Difference,
    DType,
    EpochSeconds,
    Feature,
    FeatureService,
    FeatureView,
    HashBucket,
    HourOfDay,
    Log1p,
    MinMaxScale,
    OneHot,
    Product,
    Ratio,
    RequestInput,
    StandardScale,
    Status,
    Transform,
)
from mlbackend_features.core.transforms import compile_refs, compile_service, stable_hash
from mlbackend_runtime.errors import InvalidInput

VIEWS = {
    "v": FeatureView(
        name="v",
        entities=("user",),
        features=(
            Feature(name="x", dtype=DType.DOUBLE),
            Feature(name="n", dtype=DType.INT64),
            Feature(name="s", dtype=DType.STRING),
            Feature(name="t", dtype=DType.TIMESTAMP),
        ),
    )
}


PINNED_ABC = 0xD8BB14D833D59559


def run(transforms: list[Transform], row: dict[str, Cell]) -> list[Cell]:
    """The transform outputs only (the default outputs start with the four refs)."""
    service = FeatureService(
        name="fs",
        feature_refs=("v:x", "v:n", "v:s", "v:t"),
        request_inputs=(RequestInput(name="amount", dtype=DType.DOUBLE, nullable=True),),
        transforms=tuple(transforms),
    )
    return compile_service(service, VIEWS).evaluate(dict(row))[4:]


def present(value: object) -> Cell:
    return Cell(value, Status.PRESENT, 1)  # type: ignore[arg-type]


ROW = {
    "v:x": present(3.0),
    "v:n": present(4),
    "v:s": present("b"),
    "v:t": present(datetime(2026, 3, 4, 23, 30, tzinfo=UTC)),  # a Wednesday
    "amount": Cell(6.0, Status.REQUEST_INPUT, None),
}


def values(cells: list[Cell]) -> list[object]:
    return [c.value for c in cells]


def test_numeric_transforms() -> None:
    out = run(
        [
            StandardScale(output="z", input="v:x", mean=1, std=4),
            MinMaxScale(output="mm", input="v:n", min=2, max=6),
            Log1p(output="l", input="v:x"),
            Clip(output="c", input="v:n", max=3.5),
            Bucketize(output="b", input="v:x", boundaries=(1.0, 3.0, 10.0)),
            Bucketize(output="b0", input="v:x", boundaries=(5.0,)),
            Product(output="p", left="v:x", right="amount"),
            Ratio(output="r", numerator="amount", denominator="v:x"),
        ],
        ROW,
    )
    assert values(out) == [0.5, 0.5, math.log1p(3.0), 3.5, 2, 0, 18.0, 2.0]
    assert {c.status for c in out} == {Status.COMPUTED}


def test_ratio_default_on_zero_and_chained_outputs() -> None:
    out = run(
        [
            StandardScale(output="zero", input="v:x", mean=3, std=1),
            Ratio(output="r", numerator="amount", denominator="zero", default_value=-1),
        ],
        ROW,
    )
    assert values(out) == [0.0, -1]


def test_categoricals_and_time() -> None:
    out = run(
        [
            OneHot(output="s", input="v:s", categories=("a", "b")),
            OneHot(output="o", input="v:s", categories=("z",), include_other=True),
            HashBucket(output="h", input="v:s", num_buckets=7, salt="k"),
            HourOfDay(output="hour", input="v:t"),
            HourOfDay(output="hour_berlin", input="v:t", time_zone="Europe/Berlin"),
            DayOfWeek(output="dow", input="v:t"),
            DayOfWeek(output="dow_tokyo", input="v:t", time_zone="Asia/Tokyo"),
        ],
        ROW,
    )
    assert values(out) == [0.0, 1.0, 0.0, 1.0, stable_hash(b"k", "b") % 7, 23, 0, 2, 3]


def test_difference_and_epoch_seconds() -> None:
    row = dict(ROW)
    row["signup"] = Cell(
        datetime(2026, 3, 1, 23, 30, 0, 250, tzinfo=UTC), Status.REQUEST_INPUT, None
    )
    service = FeatureService(
        name="fs",
        feature_refs=("v:x", "v:n", "v:t"),
        request_inputs=(
            RequestInput(name="amount", dtype=DType.DOUBLE, nullable=True),
            RequestInput(name="signup", dtype=DType.TIMESTAMP, nullable=True),
        ),
        transforms=(
            Difference(output="d", left="amount", right="v:x"),
            Difference(output="d_int", left="v:n", right="v:x"),
            EpochSeconds(output="e", input="v:t"),
            Difference(output="age_s", left="v:t", right="signup"),
            # What the fraud flow needed: seconds since a stored time, via epoch seconds.
            EpochSeconds(output="signup_s", input="signup"),
            Difference(output="age_s2", left="e", right="signup_s"),
        ),
        outputs=("d", "d_int", "e", "age_s", "age_s2"),
    )
    compiled = compile_service(service, VIEWS)
    assert {c.dtype for c in compiled.schema} == {DType.DOUBLE}
    out = compiled.evaluate(dict(row))
    epoch = datetime(2026, 3, 4, 23, 30, tzinfo=UTC).timestamp()
    assert values(out) == [3.0, 1.0, epoch, 3 * 86_400 - 0.00025, out[4].value]
    assert out[4].value == pytest.approx(3 * 86_400 - 0.00025, abs=1e-6)
    assert {c.status for c in out} == {Status.COMPUTED}
    row["signup"] = Cell(None, Status.REQUEST_INPUT, None)
    row["v:x"] = Cell(None, Status.EXPIRED, 1)
    nulls = compiled.evaluate(row)
    assert [(c.value, c.status) for c in nulls] == [
        (None, Status.EXPIRED), (None, Status.EXPIRED), (epoch, Status.COMPUTED),
        (None, Status.NULL_VALUE), (None, Status.NULL_VALUE),
    ]  # fmt: skip


def test_hash_is_stable_across_runs() -> None:
    assert stable_hash(b"", "user-1") == stable_hash(b"", "user-1")
    assert stable_hash(b"", "user-1") != stable_hash(b"salt", "user-1")
    # Pinned: a change here would silently re-bucket every model's inputs.
    assert stable_hash(b"", "abc") == PINNED_ABC


def test_null_inputs_keep_their_reason() -> None:
    row = dict(ROW)
    row["v:x"] = Cell(None, Status.EXPIRED, 1)
    row["v:s"] = Cell(None, Status.NOT_FOUND, None)
    row["amount"] = Cell(None, Status.REQUEST_INPUT, None)
    out = run(
        [
            StandardScale(output="z", input="v:x", mean=0, std=1),
            OneHot(output="s", input="v:s", categories=("a",)),
            Product(output="p", left="v:n", right="amount"),
            StandardScale(output="minus_two", input="v:n", mean=6, std=1),
            Log1p(output="log_of_minus_two", input="minus_two"),
        ],
        row,
    )
    assert [(c.value, c.status) for c in out] == [
        (None, Status.EXPIRED),
        (None, Status.NOT_FOUND),
        (None, Status.NULL_VALUE),
        (-2.0, Status.COMPUTED),
        (None, Status.NULL_VALUE),  # log1p is undefined at or below -1
    ]


def test_outputs_select_and_order_columns() -> None:
    service = FeatureService(
        name="fs",
        feature_refs=("v:x", "v:s"),
        transforms=(OneHot(output="s", input="v:s", categories=("a", "b")),),
        outputs=("s", "v:x"),
    )
    compiled = compile_service(service, VIEWS)
    assert [c.name for c in compiled.schema] == ["s=a", "s=b", "v:x"]
    assert [c.dtype for c in compiled.schema] == [DType.DOUBLE, DType.DOUBLE, DType.DOUBLE]
    default = compile_service(service.model_copy(update={"outputs": ()}), VIEWS)
    assert [c.name for c in default.schema] == ["v:x", "v:s", "s=a", "s=b"]


@pytest.mark.parametrize(
    ("transform", "field"),
    [
        (StandardScale(output="a", input="v:x", mean=0, std=0), "standard_scale.std"),
        (MinMaxScale(output="a", input="v:x", min=1, max=1), "min_max_scale.max"),
        (Bucketize(output="a", input="v:x", boundaries=(2.0, 1.0)), "bucketize.boundaries"),
        (HashBucket(output="a", input="v:s", num_buckets=0), "hash_bucket.num_buckets"),
        (Log1p(output="a", input="v:s"), "log1p.input"),
        (Log1p(output="a", input="nope"), "log1p.input"),
        (HourOfDay(output="a", input="v:x"), "hour_of_day.input"),
        (DayOfWeek(output="a", input="v:t", time_zone="Mars/Base"), "day_of_week.time_zone"),
        (OneHot(output="a", input="v:s", categories=()), "one_hot.categories"),
        (Clip(output="a", input="v:x", min=2, max=1), "clip.max"),
        (Log1p(output="v:x", input="v:x"), "output"),
        (Difference(output="a", left="v:s", right="v:x"), "difference.left"),
        (Difference(output="a", left="v:t", right="v:x"), "difference.right"),
        (Difference(output="a", left="v:x", right="v:t"), "difference.right"),
        (EpochSeconds(output="a", input="v:x"), "epoch_seconds.input"),
    ],
)
def test_invalid_transforms_name_the_field(transform: Transform, field: str) -> None:
    service = FeatureService(name="fs", feature_refs=("v:x", "v:s", "v:t"), transforms=(transform,))
    with pytest.raises(InvalidInput) as raised:
        compile_service(service, VIEWS)
    assert raised.value.violations[0].field == f"feature_service.transforms[0].{field}"


def test_refs_are_checked_all_at_once() -> None:
    with pytest.raises(InvalidInput) as raised:
        compile_refs(["v:x", "v:nope", "w:x", "bad", "v:x"], VIEWS, "feature_refs")
    assert [v.field for v in raised.value.violations] == [
        "feature_refs[1]", "feature_refs[2]", "feature_refs[3]", "feature_refs[4]",
    ]  # fmt: skip
