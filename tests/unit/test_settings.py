"""Settings from flags and MLBACKEND_* variables; exposure rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mlbackend_runtime.server import ConfigError, check_exposure, is_loopback
from mlbackend_runtime.settings import ServerSettings


def test_environment_fills_what_flags_leave_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBACKEND_PORT", "6000")
    monkeypatch.setenv("MLBACKEND_GRACE_SECONDS", "7.5")
    settings = ServerSettings(port=7000)  # a flag wins over the environment
    assert settings.port == 7000
    assert settings.grace_seconds == 7.5


def test_tls_files_come_in_pairs(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="given together"):
        ServerSettings(tls_cert=tmp_path / "c")
    with pytest.raises(ValidationError, match="mTLS"):
        ServerSettings(tls_client_ca=tmp_path / "ca")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.5", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.1", False)],
)  # fmt: skip
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_needs_tls_and_auth_or_an_explicit_insecure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without TLS and auth"):
        check_exposure(ServerSettings(host="0.0.0.0"))
    with pytest.raises(ConfigError, match="without auth"):
        check_exposure(
            ServerSettings(host="0.0.0.0", tls_cert=tmp_path / "c", tls_key=tmp_path / "k")
        )
    check_exposure(ServerSettings(host="0.0.0.0", insecure=True))
    check_exposure(
        ServerSettings(
            host="0.0.0.0",
            tls_cert=tmp_path / "c",
            tls_key=tmp_path / "k",
            token_file=tmp_path / "t",
        )
    )


def test_gateway_timeouts_parse_and_reach_the_gateway_options() -> None:
    from mlbackend_gateway.app import GatewayOptions

    settings = ServerSettings(timeouts="features=0.25, serving=1.5", max_in_flight=8)
    assert settings.dependency_timeouts() == {"features": 0.25, "serving": 1.5}
    options = GatewayOptions.from_settings(settings)
    assert (options.features_timeout, options.serving_timeout) == (0.25, 1.5)
    assert options.registry_timeout == GatewayOptions().registry_timeout
    assert options.pipeline.max_in_flight == 8
    for bad, message in (
        ("features", "NAME=SECONDS"),
        ("cache=1", "NAME=SECONDS"),
        ("serving=0", "positive"),
        ("serving=abc", "positive"),
        ("serving=inf", "positive"),
    ):
        with pytest.raises(ValidationError, match=message):
            ServerSettings(timeouts=bad)
