"""The agent's shard data plane server: raw TCP (or mTLS) puts and gets into its ShardStore.

One thread accepts; each connection gets a thread that serves requests until the peer closes it.
A put is received with ``recv_into`` straight into a (reused) store buffer and checked against
its CRC before it is stored. The wire format and the client are in ``ftrain.snapshot.dataplane``.
"""
from __future__ import annotations

import hmac
import logging
import queue
import socket
import ssl
import threading
import time
from typing import Callable

from ftrain.agent.store import ShardStore, StoreFull, job_problem, shard_size_problem
from ftrain.proto.ftrain.v1 import agent_pb2 as apb
from ftrain.snapshot import dataplane as dp

log = logging.getLogger("ftrain.agent.dataplane")
IDLE_TIMEOUT_S = 600.0      # a connection with no request for this long is closed
MAX_CONNECTIONS = 256       # more at once are refused (RESOURCE_EXHAUSTED): one thread serves each
TRANSFER_TIMEOUT_S = 120.0  # a put's bytes must arrive within this


class ShardDataServer:
    def __init__(self, store: ShardStore, token: str, job_id: Callable[[], str], host: str = "127.0.0.1",
                 port: int = 0, max_connections: int = MAX_CONNECTIONS) -> None:
        self.store = store
        self.max_connections = max_connections
        self._token = token.encode()
        self._job_id = job_id
        self._ssl = dp.ssl_context(server_side=True)
        self._listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                              backlog=128)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._refused: "queue.Queue[socket.socket | None]" = queue.Queue(maxsize=64)
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> "ShardDataServer":
        for target, name in ((self._accept_loop, "ftrain-data-accept"), (self._refuse_loop, "ftrain-data-refuse")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            self._refused.put_nowait(None)
        except queue.Full:
            pass
        try:  # shutdown wakes the thread blocked in accept(); close alone would leave the port bound
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _peer = self._listener.accept()
            except OSError:
                return  # closed by stop()
            with self._lock:
                full = len(self._connections) >= self.max_connections
                if not full:
                    self._connections.add(conn)
            if full:  # answered by the one refuser thread: a flood of connections cannot exhaust threads
                try:
                    self._refused.put_nowait(conn)
                except queue.Full:
                    conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="ftrain-data-conn", daemon=True).start()

    def _refuse_loop(self) -> None:
        while not self._stop.is_set():
            conn = self._refused.get()
            if conn is None:
                return
            conn.settimeout(1.0)
            self._reply(conn, dp.RESOURCE_EXHAUSTED, f"this agent serves at most {self.max_connections} "
                                                     "data plane connections at once; retry later")
            self._drain(conn, limit_s=0.5)
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        dp.lower_thread_priority()  # shard traffic yields the CPU to this node's trainers
        accepted = conn
        try:
            dp.tune_socket(conn)
            if self._ssl is not None:
                conn.settimeout(30.0)
                conn = self._ssl.wrap_socket(conn, server_side=True)  # handshake here, not in the accept loop
            while not self._stop.is_set():
                conn.settimeout(IDLE_TIMEOUT_S)
                try:
                    request = dp.read_frame(conn, apb.DataRequest)
                except dp.ConnectionClosed:  # a clean close between requests
                    return
                except dp.FrameError as error:
                    self._reply(conn, dp.INVALID_ARGUMENT, str(error))
                    self._drain(conn)
                    return
                if not self._handle(conn, request):
                    self._drain(conn)
                    return
        except (OSError, ssl.SSLError) as error:
            if not self._stop.is_set():
                log.debug("data plane connection ended: %s", error)
        finally:
            with self._lock:
                self._connections.discard(accepted)
            conn.close()

    @staticmethod
    def _drain(conn: socket.socket, limit_bytes: int = 1 << 20, limit_s: float = 1.0) -> None:
        """After an error reply: stop sending and read what the peer still sends (briefly), so that
        closing does not reset the connection before the peer has read the reply."""
        try:
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + limit_s
            drained = 0
            while drained < limit_bytes and time.monotonic() < deadline:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = conn.recv(65536)
                if not chunk:
                    return
                drained += len(chunk)
        except OSError:
            pass

    def _reply(self, conn: socket.socket, code: int, message: str = "", **fields: int) -> None:
        try:
            conn.sendall(dp.encode_frame(apb.DataReply(code=code, message=message, **fields)))
        except OSError:
            pass

    def _handle(self, conn: socket.socket, request: apb.DataRequest) -> bool:
        """Serves one request. Returns False when the connection must be closed."""
        if not hmac.compare_digest(request.token.encode(), self._token):
            self._reply(conn, dp.UNAUTHENTICATED, "missing or wrong job token; start trainers with the job's FTRAIN_TOKEN")
            return False
        foreign = job_problem(self._job_id(), request.job_id)
        if foreign:
            self._reply(conn, dp.PERMISSION_DENIED, foreign)
            return False
        if request.op == dp.OP_PUT:
            return self._put(conn, request)
        if request.op == dp.OP_GET:
            return self._get(conn, request)
        self._reply(conn, dp.INVALID_ARGUMENT, f"unknown op {request.op} (1: put, 2: get)")
        return False

    def _put(self, conn: socket.socket, request: apb.DataRequest) -> bool:
        too_big = shard_size_problem(request.total_len)
        if too_big:
            self._reply(conn, dp.INVALID_ARGUMENT, too_big)
            return False
        try:
            buffer = self.store.take_buffer(request.total_len)
        except StoreFull as full:  # read the shard past (the connection stays in step), then say why
            self._discard(conn, request.total_len)
            self._reply(conn, dp.RESOURCE_EXHAUSTED, str(full))
            return True
        try:
            dp.recv_exact(conn, memoryview(buffer), time.monotonic() + TRANSFER_TIMEOUT_S)
        except BaseException:
            self.store.give_back(buffer)
            raise
        corrupted = self.store.put_checked(request.blob_id, request.index, request.step, buffer, request.crc32,
                                           request.blob_info)
        if corrupted:
            self._reply(conn, dp.DATA_LOSS, corrupted)
        else:
            self._reply(conn, dp.OK, total_len=len(buffer))
        return True

    @staticmethod
    def _discard(conn: socket.socket, length: int) -> None:
        scratch = memoryview(bytearray(min(length, 1 << 20) or 1))
        deadline = time.monotonic() + TRANSFER_TIMEOUT_S
        while length > 0:
            piece = min(length, len(scratch))
            dp.recv_exact(conn, scratch[:piece], deadline)
            length -= piece

    def _get(self, conn: socket.socket, request: apb.DataRequest) -> bool:
        shard = self.store.serve(request.blob_id, request.index)
        if shard is None:
            self._reply(conn, dp.NOT_FOUND, f"no shard {request.blob_id}#{request.index} on this agent")
            return True
        try:
            conn.settimeout(TRANSFER_TIMEOUT_S)
            conn.sendall(dp.encode_frame(apb.DataReply(code=dp.OK, total_len=len(shard.data), crc32=shard.crc32,
                                                       step=shard.step)))
            conn.sendall(memoryview(shard.data))
        finally:
            self.store.release(shard)
        return True
