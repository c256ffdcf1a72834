"""The trainer's coordinator client: token on every call, long-polls, clear errors."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import grpc

from ftrain.config import TrainerEnv
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc
from ftrain.rpc import describe_rpc_error, open_channel, token_metadata


class CoordinatorUnavailable(RuntimeError):
    """The coordinator could not be reached within the connect timeout."""


class Unauthenticated(RuntimeError):
    """The coordinator refused this trainer's job token."""


class JobFailed(RuntimeError):
    """The coordinator declared the job failed (the message says why)."""


class CoordinatorClient:
    def __init__(self, env: TrainerEnv, connect_timeout_s: float = 30.0) -> None:
        self.env = env
        self.connect_timeout_s = connect_timeout_s
        self.channel = open_channel(env.coordinator)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.metadata = token_metadata(env.token)

    def call(self, method: str, request: object, timeout: float = 10.0, retry_unavailable: bool = True) -> Any:
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                return getattr(self.stub, method)(request, timeout=timeout, metadata=self.metadata)
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise Unauthenticated(describe_rpc_error(error, f"coordinator {self.env.coordinator}")) from None
                if code == grpc.StatusCode.UNAVAILABLE and retry_unavailable and time.monotonic() < deadline:
                    time.sleep(0.25)
                    continue
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise CoordinatorUnavailable(
                        describe_rpc_error(error, f"coordinator {self.env.coordinator}")
                        + f" (gave up after {self.connect_timeout_s:.0f} s; set FTRAIN_CONNECT_TIMEOUT to wait longer)"
                    ) from None
                raise

    def join(self, trainer_uid: str, known_generation: int) -> pb.GenerationAssignment:
        while True:
            reply = self.call("JoinGeneration", pb.JoinRequest(
                trainer_uid=trainer_uid, node_id=self.env.node_id, local_rank=self.env.local_rank,
                known_generation=known_generation, wait_s=20.0), timeout=30.0)
            if reply.status == "wait":
                continue
            if reply.status == "failed":
                raise JobFailed(reply.message or "the coordinator declared the job failed")
            return reply

    def wait_generation_change(self, generation: int, closed: threading.Event,
                               current: Callable[[], bool]) -> pb.WatchResponse | None:
        """Long-polls until the coordinator's generation differs from `generation` or the job is no
        longer running. None if `closed` is set or `current()` turns False first; an unreachable
        coordinator (restarting, say) is retried every second."""
        while not closed.is_set() and current():
            try:
                reply = self.call("WatchGeneration", pb.WatchRequest(known_generation=generation, wait_s=20.0),
                                  timeout=30.0)
            except Exception:
                if closed.wait(1.0):
                    return None
                continue
            if reply.generation != generation or reply.job_state != "running":
                return reply
        return None

    def close(self) -> None:
        self.channel.close()
