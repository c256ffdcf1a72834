"""The wire's status enums and their names (ftrain.wire): every value round-trips, and the
names the coordinator's logic uses map to the values peers compare with."""
from __future__ import annotations

import pytest

from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.wire import from_wire, to_wire

ENUMS = [pb.JobState, pb.TrainerState, pb.CheckpointKind, pb.AssignmentStatus, pb.WelcomeStatus, pb.PushStatus,
         pb.ModelStatus]


@pytest.mark.parametrize("enum", ENUMS, ids=lambda e: e.DESCRIPTOR.name)
def test_every_value_round_trips(enum) -> None:
    assert from_wire(enum, 0) == "unspecified"  # what a field left unset reads as
    for value in enum.values():
        assert to_wire(enum, from_wire(enum, value)) == value


def test_names_the_logic_uses() -> None:
    assert [to_wire(pb.JobState, s) for s in ("running", "complete", "failed")] == \
        [pb.JOB_STATE_RUNNING, pb.JOB_STATE_COMPLETE, pb.JOB_STATE_FAILED]
    # the coordinator answers a join after the job ended with the job's state
    assert to_wire(pb.AssignmentStatus, "complete") == pb.ASSIGNMENT_STATUS_COMPLETE
    assert to_wire(pb.AssignmentStatus, "failed") == pb.ASSIGNMENT_STATUS_FAILED
    # every state an agent's TrainerProcess takes
    assert [to_wire(pb.TrainerState, s) for s in ("running", "joining", "exited", "restarting", "finished")] == \
        [pb.TRAINER_STATE_RUNNING, pb.TRAINER_STATE_JOINING, pb.TRAINER_STATE_EXITED, pb.TRAINER_STATE_RESTARTING,
         pb.TRAINER_STATE_FINISHED]
    with pytest.raises(ValueError):
        to_wire(pb.JobState, "paused")
