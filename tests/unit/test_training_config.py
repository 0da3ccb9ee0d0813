"""`mlbackend train --config`: strict config validation and data-file checks (no services)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet
import pytest
import yaml

from mlbackend_cli.main import main
from mlbackend_training.config import ConfigError, load_config, parse_config
from mlbackend_training.tabular import DataError, encode, load_data, vocabulary

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "churn"
RAW: dict[str, Any] = yaml.safe_load((EXAMPLE / "churn.yaml").read_text())


def raw(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(RAW))
    out["data"] = {"path": str(EXAMPLE / "churn.csv")}
    out.update(changes)
    return out


def test_the_example_config_is_valid_and_resolves_its_data_path() -> None:
    cfg = load_config(EXAMPLE / "churn.yaml")
    assert cfg.data.path == EXAMPLE / "churn.csv"
    assert cfg.data.resolved_format() == "csv"
    assert cfg.features is not None and "contract" in cfg.features.categorical
    assert cfg.digest() == parse_config(raw()).digest()  # the file by name, not location


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"estimator": {"name": "svm"}}, r"estimator\.name: .*'svm' is not allowed"),
        ({"estimator": {"name": "random_forest", "params": {"depth": 3}}},
         r"estimator: params: random_forest has no parameter\(s\) \['depth'\]"),
        ({"split": {"test_fraction": 1.5}}, r"split\.test_fraction: Input should be less than 1"),
        ({"split": {"validation_fraction": 0.5, "test_fraction": 0.45}},
         r"split: validation_fraction \+ test_fraction leave too little"),
        ({"threshold": {"precision": 0.5, "recall": 0.5}},
         r"threshold: give exactly one of precision or recall"),
        ({"threshold": {}}, r"threshold: give exactly one"),
        ({"gate": {"min_pr_auc": 2}}, r"gate\.min_pr_auc: Input should be less than or equal"),
        ({"gate": {"min_auc": 0.5}}, r"gate\.min_auc: unknown field"),
        ({"colour": "red"}, r"colour: unknown field"),
        ({"model": "bad name!"}, r"model: String should match pattern"),
        ({"feature_service": "churn_features"}, r"give exactly one of features or feature_service"),
        ({"timestamp": None}, r"split\.method 'time' needs a timestamp column"),
        ({"features": {"numeric": [], "categorical": []}},
         r"features: .*name at least one numeric or categorical feature"),
        ({"features": {"numeric": ["tenure_months"], "categorical": ["tenure_months"]}},
         r"features: .*listed more than once: \['tenure_months'\]"),
        ({"features": {"numeric": ["churned"]}}, r"features \['churned'\] are the .* label"),
        ({"label": {"positive": "yes"}}, r"label\.column: Field required"),
    ],
)  # fmt: skip
def test_invalid_configs_are_refused_naming_the_field(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw(**changes))


def test_missing_fields_and_non_mappings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"entity_key: Field required"):
        parse_config({k: v for k, v in raw().items() if k != "entity_key"})
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config(["model", "churn"])


def _write_csv(path: Path, text: str) -> Any:
    path.write_text(text)
    return parse_config(raw(data={"path": str(path)}))


@pytest.mark.parametrize(
    ("header_and_rows", "message"),
    [
        ("", r"has no rows|cannot be read"),
        ("customer_id,snapshot_time,churned\n", r"has no rows"),
        ("customer_id,snapshot_time,tenure_months,churned\nc1,2025-01-01,3,yes\n",
         r"features\.numeric: column 'monthly_charges'.*features\.categorical: column 'contract'"),
    ],
)  # fmt: skip
def test_data_file_problems_are_clear(header_and_rows: str, message: str, tmp_path: Path) -> None:
    cfg = _write_csv(tmp_path / "data.csv", header_and_rows)
    with pytest.raises(DataError, match=message):
        load_data(cfg)


def test_a_binary_config_on_a_three_valued_label_names_every_conflict(tmp_path: Path) -> None:
    text = (EXAMPLE / "churn.csv").read_text().splitlines()
    three = [text[0], *text[1:50], text[50].rsplit(",", 1)[0] + ",maybe"]
    cfg = _write_csv(tmp_path / "three.csv", "\n".join(three) + "\n")
    with pytest.raises(DataError) as raised:
        load_data(cfg)
    message = str(raised.value)
    assert "label: column 'churned' has 3 distinct values ['maybe', 'no', 'yes'] (multiclass)" in (
        message
    )
    assert "label.positive: only for a binary label" in message
    assert "threshold: a multiclass label has no decision threshold" in message
    assert "gate.min_pr_auc: only for a binary label" in message
    one = [text[0], *(line for line in text[1:80] if line.endswith(",no"))]
    cfg = _write_csv(tmp_path / "one.csv", "\n".join(one) + "\n")
    with pytest.raises(DataError, match=r"has 1 distinct value\(s\) \['no'\]; a classifier needs"):
        load_data(cfg)


def test_label_must_have_a_known_positive_class() -> None:
    cfg = parse_config(raw(label={"column": "churned"}))
    with pytest.raises(DataError, match=r"label\.positive: say which of \['no', 'yes'\]"):
        load_data(cfg)
    cfg = parse_config(raw(label={"column": "churned", "positive": "Yes"}))
    with pytest.raises(DataError, match=r"label\.positive: 'Yes' is not a value"):
        load_data(cfg)


def test_text_in_a_numeric_feature_is_refused() -> None:
    cfg = parse_config(raw(features={"numeric": ["region"]}))
    with pytest.raises(DataError, match=r"features\.numeric: column 'region' is string"):
        load_data(cfg)


def test_parquet_reads_like_csv_and_categories_become_codes(tmp_path: Path) -> None:
    parquet = tmp_path / "churn.parquet"
    pyarrow.parquet.write_table(pa.csv.read_csv(EXAMPLE / "churn.csv"), parquet)
    a = load_data(parse_config(raw()))
    b = load_data(parse_config(raw(data={"path": str(parquet)})))
    assert (a.rows, a.classes) == (b.rows, ("no", "yes"))
    assert (a.label == b.label).all() and (a.timestamp == b.timestamp).all()
    cats = vocabulary(a)
    assert cats["region"] == ["east", "north", "south", "west"]
    m = encode(a, ["tenure_months", "region"], cats)
    assert set(m.column("region").tolist()) == {0.0, 1.0, 2.0, 3.0}
    other = encode(a, ["region"], {"region": ["north"]})  # a champion's older codes
    assert set(other.column("region").tolist()) == {0.0, -1.0}
    assert 0.1 < a.positive_rate < 0.3


def test_cli_exits_2_on_a_bad_config_and_on_a_bad_data_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw(split={"method": "random"})))
    assert main(["train", "--config", str(bad)]) == 2
    assert "split.method: Input should be 'time' or 'stratified'" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump(raw(data={"path": str(tmp_path / "nope.csv")})))
    assert main(["train", "--config", str(bad), "--registry", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "data.path:" in err and "does not exist" in err
    bad.write_text("model: [unclosed")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["train", "--config", str(EXAMPLE / "churn.yaml"), "fraud"]) == 2
    assert "exclusive" in capsys.readouterr().err
