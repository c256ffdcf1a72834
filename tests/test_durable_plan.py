"""The durable tier's pure plan (ftrain.coordinator.durable, fake clock) and its files
(ftrain.snapshot.durable): when a committed step becomes a checkpoint, who writes what, and that
a torn, truncated or corrupted checkpoint is never picked."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ftrain.coordinator.catalog import BlobRecord
from ftrain.coordinator.durable import DurablePlanner, DurableSettings, Finalize, Write
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.snapshot import durable


def blobs(step: int, placement: list[list[str]]) -> list[BlobRecord]:
    """One blob per rank; placement[rank] lists the nodes of its shards 0..k+m-1."""
    out = []
    for rank, nodes in enumerate(placement):
        info = pb.BlobInfo(blob_id=f"b{step}-{rank}", step=step, producer_rank=rank, producer_world_size=len(placement),
                           k=1, m=len(nodes) - 1,
                           shards=[pb.ShardLocation(index=i, node_id=n, address=f"{n}:1") for i, n in enumerate(nodes)])
        out.append(BlobRecord(step, rank, len(placement), f"t{rank}", f"n{rank}", tuple(nodes), info))
    return out


PLACEMENT = [["n1", "n2"], ["n2", "n0"], ["n0", "n1"]]
LIVE = {"n0", "n1", "n2"}


def planner(every: int = 10, every_s: float = 0.0, timeout_s: float = 600.0, resumed: int = -1) -> DurablePlanner:
    return DurablePlanner(DurableSettings("/ckpt", every, every_s, keep=2, timeout_s=timeout_s), "job", now=0.0,
                          resumed_step=resumed)


def test_due_every_n_steps_from_the_last_checkpoint_whatever_the_snapshot_interval() -> None:
    p = planner(every=10)
    assert [s for s in range(0, 22, 3) if p.on_commit(s, 0, 3, blobs(s, PLACEMENT), LIVE, 1.0)[0]] == [12]
    p.in_flight = None  # (as if it had completed)
    assert p.on_commit(24, 0, 3, blobs(24, PLACEMENT), LIVE, 2.0)[0]


def test_the_final_step_is_checkpointed_whenever_it_is_new() -> None:
    p = planner(every=10)
    assert p.on_commit(14, 0, 3, blobs(14, PLACEMENT), LIVE, 1.0, final=True)[0]
    p.in_flight = None
    assert not p.on_commit(14, 0, 3, blobs(14, PLACEMENT), LIVE, 2.0, final=True)[0]  # already taken


def test_a_final_step_skipped_as_busy_is_checkpointed_once_the_one_in_flight_ends() -> None:
    p = planner(every=10)
    assert p.on_commit(10, 0, 3, blobs(10, PLACEMENT), LIVE, 1.0)[0]
    orders, outcome = p.on_commit(20, 0, 3, blobs(20, PLACEMENT), LIVE, 2.0)  # due, but step 10 is in flight
    assert not orders and outcome is not None and outcome.reason == "busy"
    p.in_flight = None  # step 10 done; the job completed at step 20: its last step must still go to disk
    assert p.on_commit(20, 0, 3, blobs(20, PLACEMENT), LIVE, 3.0, final=True)[0]
    p.in_flight = None
    assert not p.on_commit(20, 0, 3, blobs(20, PLACEMENT), LIVE, 4.0, final=True)[0]  # once


def test_due_by_time_and_after_a_resume() -> None:
    p = planner(every=0, every_s=30.0)
    assert not p.due(5, now=29.0) and p.due(5, now=30.0)
    resumed = planner(every=10, resumed=20)
    assert not resumed.due(29, 1.0) and resumed.due(30, 1.0) and resumed.last_step == 20


def test_each_rank_written_by_a_live_holder_with_the_load_spread() -> None:
    p = planner()
    orders, outcome = p.on_commit(10, 0, 3, blobs(10, PLACEMENT), LIVE, 1.0)
    assert outcome is None
    assert [(o.rank, o.node_id) for o in orders] == [(0, "n1"), (1, "n2"), (2, "n0")]
    # n1 down: rank 0 (shards on n1, n2) goes to n2; rank 1 (n2, n0) to n0, which has fewer writes
    p2 = planner()
    orders, _ = p2.on_commit(10, 0, 3, blobs(10, PLACEMENT), {"n0", "n2"}, 1.0)
    assert {o.rank: o.node_id for o in orders} == {0: "n2", 1: "n0", 2: "n0"}


def test_manifest_once_every_rank_is_written_then_complete() -> None:
    p = planner()
    orders, _ = p.on_commit(10, 3, 3, blobs(10, PLACEMENT), LIVE, 1.0)
    finals: list[Finalize] = []
    for order in orders:
        finals += p.on_written(order.node_id, 10, order.rank, durable.part_name(order.rank), 100 + order.rank, 7, 0.5)
    assert len(finals) == 1 and finals[0].node_id == orders[-1].node_id  # the last writer finalizes
    manifest = finals[0].manifest
    assert manifest["format"] == durable.FORMAT and manifest["step"] == 10 and manifest["generation"] == 3
    assert [part["rank"] for part in manifest["parts"]] == [0, 1, 2]
    assert manifest["parts"][1]["blob_id"] == "b10-1" and manifest["parts"][1]["bytes"] == 101
    assert p.on_finalized("elsewhere", 10, 3.0) is None  # only the chosen finalizer's report counts
    outcome = p.on_finalized(finals[0].node_id, 10, 3.5)
    assert outcome is not None and outcome.kind == "written" and outcome.bytes == 303 and outcome.seconds == 2.5
    assert p.last_step == 10 and p.in_flight is None


def _dcp_flags(p: DurablePlanner, steps: list[int], final: int | None = None) -> list[bool]:
    """Writes and completes the checkpoint of each step; returns whether its finalize asked for a DCP copy."""
    flags = []
    for step in steps:
        orders, _ = p.on_commit(step, 0, 3, blobs(step, PLACEMENT), LIVE, float(step), final=step == final)
        finals = [f for o in orders for f in p.on_written(o.node_id, step, o.rank, "f", 1, 1, 0.1)]
        assert len(finals) == 1 and p.on_finalized(finals[0].node_id, step, float(step)) is not None
        flags.append(finals[0].dcp)
    return flags


def test_the_dcp_copy_goes_with_the_first_every_kth_and_the_final_checkpoint() -> None:
    assert _dcp_flags(planner(every=10), [10, 20, 30]) == [True, True, True]  # default: every one
    every3 = DurablePlanner(DurableSettings("/ckpt", 10, dcp_every=3), "job", now=0.0)
    assert _dcp_flags(every3, [10, 20, 30, 40, 50, 55], final=55) == [True, False, False, True, False, True]
    never = DurablePlanner(DurableSettings("/ckpt", 10, dcp_every=0), "job", now=0.0)
    assert _dcp_flags(never, [10, 15], final=15) == [False, False]


def test_a_due_step_while_one_is_in_flight_is_skipped_as_busy() -> None:
    p = planner(every=10)
    p.on_commit(10, 0, 3, blobs(10, PLACEMENT), LIVE, 1.0)
    orders, outcome = p.on_commit(20, 0, 3, blobs(20, PLACEMENT), LIVE, 2.0)
    assert orders == [] and outcome is not None and outcome.kind == "skipped" and outcome.reason == "busy"
    assert p.in_flight is not None and p.in_flight.step == 10  # the one being written goes on
    assert not p.due(25, 3.0) and p.due(30, 3.0)  # the skipped step counts as begun: no catch-up storm


def test_a_failed_write_abandons_and_a_stale_report_is_ignored() -> None:
    p = planner()
    p.on_commit(10, 0, 3, blobs(10, PLACEMENT), LIVE, 1.0)
    assert p.on_failed("n0", 9, 2, "disk-full", "old") is None
    outcome = p.on_failed("n0", 10, 2, "disk-full", "OSError: [Errno 28] No space left on device")
    assert outcome is not None and outcome.kind == "failed" and outcome.reason == "disk-full"
    assert "rank 2's file" in outcome.detail and "No space left" in outcome.detail
    assert p.in_flight is None and p.last_step == -1
    assert p.on_written("n0", 10, 2, "f", 1, 1, 0.1) == []


def test_a_lost_writer_hands_its_rank_to_another_holder_or_abandons() -> None:
    p = planner()
    p.on_commit(10, 0, 3, blobs(10, PLACEMENT), LIVE, 1.0)
    orders, outcome = p.on_node_lost("n1", LIVE - {"n1"})
    assert outcome is None and orders == [Write("n2", 10, 0, blobs(10, PLACEMENT)[0].info)]
    lone = [["n1"], ["n2"], ["n0"]]  # k=1, m=0: nobody else holds rank 0's shard
    p2 = planner()
    p2.on_commit(10, 0, 3, blobs(10, lone), LIVE, 1.0)
    orders, outcome = p2.on_node_lost("n1", LIVE - {"n1"})
    assert orders == [] and outcome is not None and outcome.reason == "writer-lost"


def test_a_checkpoint_not_done_in_time_is_abandoned() -> None:
    p = planner(timeout_s=60.0)
    p.on_commit(10, 0, 3, blobs(10, PLACEMENT), LIVE, 1.0)
    assert p.tick(60.0) is None
    outcome = p.tick(61.0)
    assert outcome is not None and outcome.reason == "timeout" and "[0, 1, 2]" in outcome.detail


# -- the files ---------------------------------------------------------------------------------
def write_checkpoint(root: Path, step: int, world: int = 2, keep: int = 5) -> list[str]:
    parts = []
    for rank in range(world):
        blob = np.frombuffer(bytes([step % 256, rank]) * 500, dtype=np.uint8)
        name, size, crc = durable.write_part(str(root), step, rank, blob)
        parts.append({"rank": rank, "file": name, "bytes": size, "crc32": crc})
    manifest = {"format": durable.FORMAT, "job_id": "j", "step": step, "generation": 0, "world_size": world,
                "parts": parts}
    return durable.finalize(str(root), step, manifest, keep)


def test_newest_complete_checkpoint_and_keep(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        write_checkpoint(tmp_path, step, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["step-000000020", "step-000000030"]
    checkpoint, passed = durable.newest_complete(str(tmp_path))
    assert checkpoint is not None and checkpoint.step == 30 and passed == []
    assert [p.rank for p in checkpoint.parts] == [0, 1]
    part = checkpoint.parts[1]
    assert bytes(durable.read_part(part.path, part.bytes, part.crc32)[:2]) == bytes([30, 1])


def test_torn_truncated_and_corrupted_checkpoints_are_passed_over_by_name(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10)
    write_checkpoint(tmp_path, 20)
    write_checkpoint(tmp_path, 30)
    # step 40 interrupted mid-write: a partial directory with one rank's file and no manifest
    durable.write_part(str(tmp_path), 40, 0, np.zeros(100, np.uint8))
    corrupted = tmp_path / "step-000000030" / "rank-00001.blob"
    data = bytearray(corrupted.read_bytes())
    data[10] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    truncated = tmp_path / "step-000000020" / "rank-00000.blob"
    truncated.write_bytes(truncated.read_bytes()[:-1])
    checkpoint, passed = durable.newest_complete(str(tmp_path))
    assert checkpoint is not None and checkpoint.step == 10
    assert "step-000000040.partial: incomplete" in passed[0]
    assert str(corrupted) in passed[1] and "failed its checksum" in passed[1]
    assert str(truncated) in passed[2] and "999 bytes" in passed[2]
    with pytest.raises(durable.CheckpointError, match="rank-00001.blob failed its checksum"):
        durable.read_part(str(corrupted), len(data), checkpoint.parts[1].crc32)


def test_a_manifest_never_lists_a_missing_file(tmp_path: Path) -> None:
    name, size, crc = durable.write_part(str(tmp_path), 10, 0, np.ones(64, np.uint8))
    manifest = {"format": durable.FORMAT, "job_id": "j", "step": 10, "generation": 0, "world_size": 2,
                "parts": [{"rank": 0, "file": name, "bytes": size, "crc32": crc},
                          {"rank": 1, "file": durable.part_name(1), "bytes": 64, "crc32": 0}]}
    with pytest.raises(durable.CheckpointError, match="rank-00001.blob: missing"):
        durable.finalize(str(tmp_path), 10, manifest, keep=2)
    assert os.listdir(tmp_path) == ["step-000000010.partial"]
    assert durable.newest_complete(str(tmp_path))[0] is None


def test_foreign_or_malformed_manifests_are_refused(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10)
    manifest = tmp_path / "step-000000010" / durable.MANIFEST
    manifest.write_text(json.dumps({"format": "something-else"}))
    checkpoint, passed = durable.newest_complete(str(tmp_path))
    assert checkpoint is None and "not an ftrain checkpoint manifest" in passed[0]
    manifest.write_text("{not json")
    assert "cannot be read" in durable.newest_complete(str(tmp_path))[1][0]
