"""The trainer's coordinator client: token on every call, long-polls, clear errors."""
from __future__ import annotations

import threading
from typing import Any, Callable


from ftrain.config import TrainerEnv
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc
from ftrain.rpc import PeerUnavailable as CoordinatorUnavailable, Unauthenticated, call_retrying, open_channel, \
    token_metadata

__all__ = ["CoordinatorClient", "CoordinatorUnavailable", "JobFailed", "Unauthenticated"]


class JobFailed(RuntimeError):
    """The coordinator declared the job failed (the message says why)."""


class CoordinatorClient:
    def __init__(self, env: TrainerEnv, connect_timeout_s: float = 30.0) -> None:
        self.env = env
        self.connect_timeout_s = connect_timeout_s
        self.channel = open_channel(env.coordinator)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.metadata = token_metadata(env.token)

    def _call(self, method: Callable[..., Any], request: object, timeout: float = 10.0,
              retry_unavailable: bool = True) -> Any:
        return call_retrying(lambda: method(request, timeout=timeout, metadata=self.metadata),
                             f"coordinator {self.env.coordinator}", self.connect_timeout_s,
                             retry_unavailable=retry_unavailable,
                             hint=f" (gave up after {self.connect_timeout_s:.0f} s; set FTRAIN_CONNECT_TIMEOUT to "
                                  f"wait longer)")

    # one method per RPC a trainer makes (the retry policy: ftrain.rpc.call_retrying)
    def report_snapshot(self, request: pb.SnapshotReport) -> pb.SnapshotAck:
        return self._call(self.stub.ReportSnapshot, request, timeout=30.0)

    def wait_committed(self, request: pb.WaitCommittedRequest) -> pb.WaitCommittedResponse:
        return self._call(self.stub.WaitCommitted, request, timeout=30.0)

    def report_progress(self, request: pb.ProgressReport) -> pb.Ack:
        """A pulse (request.pulse) is never retried: the next one comes a second later."""
        return self._call(self.stub.ReportProgress, request, timeout=5.0 if request.pulse else 10.0,
                          retry_unavailable=not request.pulse)

    def report_failure(self, request: pb.FailureReport) -> pb.Ack:
        return self._call(self.stub.ReportFailure, request)

    def report_finished(self, request: pb.FinishedReport) -> pb.Ack:
        return self._call(self.stub.ReportFinished, request)

    def report_user_error(self, request: pb.UserErrorReport) -> pb.UserErrorVerdict:
        return self._call(self.stub.ReportUserError, request, timeout=5.0,
                          retry_unavailable=False)

    def claim_fault(self, request: pb.FaultClaim) -> pb.Ack:
        return self._call(self.stub.ClaimFault, request)

    def watch(self, request: pb.WatchRequest) -> pb.WatchResponse:
        return self._call(self.stub.WatchGeneration, request, timeout=30.0)

    def join(self, trainer_uid: str, known_generation: int) -> pb.GenerationAssignment:
        while True:
            reply: pb.GenerationAssignment = self._call(self.stub.JoinGeneration, pb.JoinRequest(
                trainer_uid=trainer_uid, node_id=self.env.node_id, local_rank=self.env.local_rank,
                known_generation=known_generation, wait_s=20.0), timeout=30.0)
            if reply.status == pb.ASSIGNMENT_STATUS_WAIT:
                continue
            if reply.status == pb.ASSIGNMENT_STATUS_FAILED:
                raise JobFailed(reply.message or "the coordinator declared the job failed")
            if reply.status not in (pb.ASSIGNMENT_STATUS_OK, pb.ASSIGNMENT_STATUS_COMPLETE):
                raise RuntimeError(f"ftrain: the coordinator {self.env.coordinator} answered JoinGeneration with status "
                                   f"{reply.status}, which this trainer does not know: it runs another ftrain "
                                   "version; run the same one everywhere")
            return reply

    def wait_generation_change(self, generation: int, closed: threading.Event,
                               current: Callable[[], bool]) -> pb.WatchResponse | None:
        """Long-polls until the coordinator's generation differs from `generation` or the job is no
        longer running. None if `closed` is set or `current()` turns False first; an unreachable
        coordinator (restarting, say) is retried every second."""
        while not closed.is_set() and current():
            try:
                reply = self.watch(pb.WatchRequest(known_generation=generation, wait_s=20.0))
            except Exception:
                if closed.wait(1.0):
                    return None
                continue
            if reply.generation != generation or reply.job_state != pb.JOB_STATE_RUNNING:
                return reply
        return None

    def close(self) -> None:
        self.channel.close()
