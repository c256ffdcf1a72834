"""gRPC plumbing shared by coordinator, agent and trainers: token auth, channels, size limits.

Every ftrain RPC carries the job token in `x-ftrain-token`; the server compares it in constant
time and answers UNAUTHENTICATED otherwise. The standard health service stays open so that
probes (kubelet, grpc_health_probe) work without the secret; it reveals nothing but liveness.
With FTRAIN_TLS_CERT/KEY/CA set (`--tls-cert/--tls-key/--tls-ca`), every server requires and
every channel presents a certificate signed by the job's CA (mutual TLS).
"""
from __future__ import annotations

import hmac
import os
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ftrain.config import TOKEN_METADATA_KEY, ConfigError

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 4 * 1024 * 1024
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
]


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses any RPC (except health/reflection) whose token does not match, in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "ftrain: missing or wrong job token (x-ftrain-token); start trainers with the job's FTRAIN_TOKEN",
            )

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream_in = grpc.stream_unary_rpc_method_handler(deny)
        self._deny_stream_out = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method or ""
        if method.startswith(_OPEN_PREFIXES):
            return continuation(handler_call_details)
        supplied = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == TOKEN_METADATA_KEY:
                supplied = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(supplied, self._token):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is not None and handler.request_streaming:
            return self._deny_stream_in
        if handler is not None and handler.response_streaming:
            return self._deny_stream_out
        return self._deny_unary


def make_server(token: str, max_workers: int = 64) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ftrain-rpc"),
        interceptors=[TokenInterceptor(token)],
        options=_CHANNEL_OPTIONS,
        maximum_concurrent_rpcs=4096,
    )


def add_health_and_reflection(server: grpc.Server, service_names: Sequence[str]) -> health.HealthServicer:
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in list(service_names) + [""]:
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(list(service_names) + [reflection.SERVICE_NAME, health.SERVICE_NAME], server)
    return servicer


ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_CA = "FTRAIN_TLS_CERT", "FTRAIN_TLS_KEY", "FTRAIN_TLS_CA"


@dataclass(frozen=True)
class TlsFiles:
    """Mutual TLS material: this process's certificate and key, and the CA that signs every peer."""

    cert: bytes
    key: bytes
    ca: bytes


def tls_from_env(environ: dict[str, str] | None = None) -> TlsFiles | None:
    """mTLS is on when FTRAIN_TLS_CERT/KEY/CA name files (all three, or none)."""
    env = os.environ if environ is None else environ
    paths = {name: env.get(name, "") for name in (ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_CA)}
    if not any(paths.values()):
        return None
    missing = [name for name, path in paths.items() if not path]
    if missing:
        raise ConfigError(f"mTLS needs --tls-cert, --tls-key and --tls-ca together; missing {', '.join(missing)}")
    data = {}
    for name, path in paths.items():
        try:
            with open(path, "rb") as f:
                data[name] = f.read()
        except OSError as error:
            raise ConfigError(f"{name}: cannot read {path!r}: {error.strerror}") from None
    return TlsFiles(data[ENV_TLS_CERT], data[ENV_TLS_KEY], data[ENV_TLS_CA])


def bind(server: grpc.Server, host: str, port: int) -> int:
    tls = tls_from_env()
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.ca,
                                                  require_client_auth=True)
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {address}: address in use or not available")
    return bound


def open_channel(address: str) -> grpc.Channel:
    tls = tls_from_env()
    if tls is None:
        return grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                               certificate_chain=tls.cert)
    return grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((TOKEN_METADATA_KEY, token),)


def describe_rpc_error(error: grpc.RpcError, target: str) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach {target}: {details} (is it running, and is the address right?)"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{target} refused the job token: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{target} did not answer in time"
    return f"{target}: {code.name if code else 'error'}: {details}"


class PeerUnavailable(RuntimeError):
    """A coordinator, aggregator or agent could not be reached within the connect timeout."""


class Unauthenticated(RuntimeError):
    """The peer refused this process's job token."""


T = TypeVar("T")


def call_retrying(call: Callable[[], T], target: str, connect_timeout_s: float, *, retry_unavailable: bool = True,
                  interval_s: float = 0.25, hint: str = "") -> T:
    """The one retry policy for RPCs to a peer that may be starting or restarting: `call()` is
    retried every `interval_s` while it fails UNAVAILABLE, for up to `connect_timeout_s`. A refused
    token raises Unauthenticated at once; UNAVAILABLE past the deadline, or DEADLINE_EXCEEDED,
    raises PeerUnavailable (with `hint` appended); any other error is raised as it is."""
    deadline = time.monotonic() + connect_timeout_s
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(describe_rpc_error(error, target)) from None
            if code == grpc.StatusCode.UNAVAILABLE and retry_unavailable and time.monotonic() < deadline:
                time.sleep(interval_s)
                continue
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise PeerUnavailable(describe_rpc_error(error, target) + hint) from None
            raise
