"""The coordinator's pure state machine, driven with a fake clock: one test (at least) per
recovery transition. No server, no threads: every input is an `on_*` call with the time, and
the assertions read the effects it returns and the commands it queues for agents."""
from __future__ import annotations

from dataclasses import replace

from ftrain.config import JobSettings, parse_fault
from ftrain.coordinator.bugs import UserError
from ftrain.coordinator.machine import CoordinatorMachine, Effects
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.snapshot import durable as durable_files


class Job:
    """A machine plus the bookkeeping of a test: registered nodes, trainer uids, the clock."""

    def __init__(self, **settings: object) -> None:
        base = dict(job_id="unit", target_nodes=2, min_nodes=1, replace_timeout_s=20.0, hang_timeout_s=30.0,
                    heartbeat_dead_after_s=10.0)
        base.update(settings)
        self.m = CoordinatorMachine(JobSettings(**base).validate(), "127.0.0.1:1", now=0.0)  # type: ignore[arg-type]
        self.now = 0.0
        self.pids: dict[str, int] = {}
        self.effects: list[Effects] = []
        self.known: dict[str, int] = {}  # node -> the generation its trainer knew when it first asked

    def fx(self, effects: Effects) -> Effects:
        self.effects.append(effects)
        return effects

    def kinds(self) -> list[str]:
        return [e.kind for fx in self.effects for e in fx.events]

    def metric(self, name: str) -> list[float]:
        return [u.value for fx in self.effects for u in fx.metrics if u.metric == name]

    def at(self, now: float) -> "Job":
        self.now = now
        return self

    def register(self, node: str, nproc: int = 1) -> None:
        node_id, fx = self.m.on_register(self.now, pb.RegisterAgentRequest(node_id=node, address=f"{node}:1",
                                                                           nproc=nproc, generation=-1))
        assert node_id == node
        self.fx(fx)

    def uid(self, node: str, local_rank: int = 0) -> str:
        return f"{node}/{local_rank}/{self.pids.setdefault(f'{node}/{local_rank}', 100)}"

    def restart_trainer(self, node: str, local_rank: int = 0) -> None:
        self.pids[f"{node}/{local_rank}"] = self.pids.get(f"{node}/{local_rank}", 100) + 1

    def join(self, node: str, local_rank: int = 0, first: bool = True) -> pb.GenerationAssignment | None:
        known = self.m.plan.generation.number if self.m.plan else -1
        request = pb.JoinRequest(trainer_uid=self.uid(node, local_rank), node_id=node, local_rank=local_rank,
                                 known_generation=known if first else self.known.get(node, known))
        if first:
            self.known[node] = known
        assignment, fx = self.m.on_join(self.now, request, first)
        self.fx(fx)
        return assignment

    def form(self, *nodes: str) -> dict[str, pb.GenerationAssignment]:
        """Every trainer of `nodes` asks to join; returns each one's assignment."""
        self.known = {}
        for node in nodes:
            self.join(node)
        out = {}
        for node in nodes:
            assignment = self.join(node, first=False)
            assert assignment is not None and assignment.status == pb.ASSIGNMENT_STATUS_OK, (node, assignment)
            out[node] = assignment
        return out

    def heartbeat(self, node: str) -> pb.HeartbeatResponse:
        reply, fx = self.m.on_heartbeat(self.now, pb.HeartbeatRequest(node_id=node))
        self.fx(fx)
        return reply

    def tick(self) -> Effects:
        return self.fx(self.m.on_tick(self.now))

    def snapshot(self, node: str, rank: int, step: int, shards: tuple[str, ...] = ()) -> bool:
        plan = self.m.plan
        assert plan is not None
        blob = pb.BlobInfo(blob_id=f"s{step}-r{rank}", step=step, producer_rank=rank,
                           producer_world_size=plan.generation.world_size, producer_trainer=self.uid(node),
                           producer_node=node, size=10, k=1, m=1, shard_len=10,
                           generation=plan.generation.number,
                           shards=[pb.ShardLocation(index=i, node_id=n) for i, n in enumerate(shards or (node,))])
        accepted, fx = self.m.on_snapshot(self.now, pb.SnapshotReport(
            trainer_uid=self.uid(node), generation=plan.generation.number, rank=rank, step=step, blob=blob))
        self.fx(fx)
        return accepted

    def pulse(self, node: str, rank: int, step: int, in_collective: bool = False) -> None:
        generation = self.m.plan.generation.number if self.m.plan else -1
        self.fx(self.m.on_progress(self.now, pb.ProgressReport(trainer_uid=self.uid(node), generation=generation,
                                                               rank=rank, step=step, pulse=True,
                                                               in_collective=in_collective)))

    def finished(self, rank: int, step: int) -> None:
        generation = self.m.plan.generation.number if self.m.plan else -1
        self.fx(self.m.on_finished(self.now, pb.FinishedReport(generation=generation, rank=rank, step=step)))

    def running(self, *nodes: str) -> "Job":
        for node in nodes:
            self.register(node)
        self.form(*nodes)
        return self


def test_join_forms_the_first_generation_once_every_trainer_asked() -> None:
    job = Job()
    job.register("node1")
    job.register("node0")
    assert job.join("node1") is None  # node0's trainer has not asked yet: wait
    assert job.m.membership.pending and job.m.plan is None
    first = job.join("node0")
    assert first is not None and first.status == pb.ASSIGNMENT_STATUS_OK
    assignments = {n: job.join(n, first=False) for n in ("node0", "node1")}
    # ranks are dealt in node-id order, whoever asked first
    assert {n: a.rank for n, a in assignments.items() if a} == {"node0": 0, "node1": 1}
    assert first.generation == 0 and first.world_size == 2 and first.restore_step == -1
    assert [u.value for fx in job.effects for u in fx.metrics if u.metric == "generation"] == [0]
    assert job.kinds().count("generation") == 1 and any(fx.wake for fx in job.effects)
    assert first.store_address == "127.0.0.1:1" and first.config.collective_timeout_s == 40.0


def test_commit_needs_every_rank_and_is_refused_from_an_old_generation() -> None:
    job = Job().running("node0", "node1")
    assert job.snapshot("node0", 0, 5)
    assert job.m.catalog.newest_committed == -1  # rank 1 has not stored its blob of step 5
    assert job.snapshot("node1", 1, 5)
    assert job.m.catalog.newest_committed == 5 and job.metric("step") == [5]
    job.fx(job.m.on_failure_report(job.now, pb.FailureReport(generation=0, rank=0, reason="peer closed")))
    assert job.m.membership.pending
    assert not job.snapshot("node0", 0, 6)  # the generation is re-forming: nothing more commits in it


def test_trainer_failure_reforms_and_restores_the_newest_committed_step() -> None:
    job = Job().running("node0", "node1")
    job.at(1.0)
    job.snapshot("node0", 0, 7), job.snapshot("node1", 1, 7)
    job.at(2.0)
    ack, fx = job.m.on_trainer_exit(job.now, pb.TrainerExit(node_id="node1", local_rank=0, pid=100, exit_code=-9,
                                                            will_restart=True, uptime_s=2.0))
    job.fx(fx)
    assert ack.ok and job.m.failures == 1 and job.m.membership.pending
    assert "failure" in job.kinds() and job.m.failure_since == 2.0
    assert job.metric("world_size")[-1] == 1  # the dead trainer's rank no longer counts
    # re-form: the survivor and the restarted trainer join generation 1, which restores step 7
    job.restart_trainer("node1")
    job.at(3.0)
    assignments = job.form("node0", "node1")
    assert {a.generation for a in assignments.values()} == {1}
    assert {a.restore_step for a in assignments.values()} == {7}
    blobs = assignments["node0"].restore_blobs
    # node0's trainer kept its own blob; node1's new process reads the old one's from shards
    assert [(b.producer_rank, b.source_holds_local) for b in blobs] == [(0, True), (1, False)]
    assert job.m.recoveries == 1
    job.at(4.5)
    job.snapshot("node0", 0, 8), job.snapshot("node1", 1, 8)
    recovered = [e for fx in job.effects for e in fx.events if e.kind == "recovered"]
    assert len(recovered) == 1 and recovered[0].extra["recovery_s"] == 2.5 and recovered[0].extra["formed_s"] == 1.0
    assert job.m.failure_since is None


def test_heartbeat_silence_declares_a_node_dead_and_a_replacement_takes_its_slot() -> None:
    job = Job().running("node0", "node1")
    job.at(5.0)
    job.heartbeat("node0")
    job.at(10.5)
    job.tick()
    assert job.m.membership.nodes["node1"].alive is False  # 10.5 s without a heartbeat (node0: 5.5 s)
    assert job.m.membership.nodes["node0"].alive
    assert any("node node1 lost (no heartbeat for 10.5 s)" == e.message for fx in job.effects for e in fx.events)
    assert ("heartbeat_age", "remove") in [(u.metric, u.op) for fx in job.effects for u in fx.metrics]
    assert job.heartbeat("node1").known is False  # it must re-register (a frozen node waking up)
    job.at(12.0)
    job.register("node2")  # the replacement takes node1's slot and ranks
    assignments = job.form("node0", "node2")
    assert assignments["node2"].rank == 1 and assignments["node0"].world_size == 2


def test_shrink_after_the_replace_timeout_down_to_min_nodes() -> None:
    job = Job(target_nodes=3, min_nodes=2).running("node0", "node1", "node2")
    job.at(1.0)
    job.fx(job.m.on_agent_unreachable(job.now, "node2"))
    for node in ("node0", "node1"):
        assert job.join(node) is None  # the slot waits for a replacement...
    for t in range(2, 21, 2):  # the survivors' agents keep heartbeating
        job.at(t + 0.9)
        job.heartbeat("node0"), job.heartbeat("node1")
        job.tick()
        assert job.m.plan is not None and job.m.plan.generation.number == 0
    job.at(21.0)  # ...for replace_timeout_s (20 s); then the job goes on with the survivors
    job.tick()
    assert job.m.plan.generation.number == 1 and job.m.plan.generation.world_size == 2
    job.at(22.0)
    job.fx(job.m.on_agent_unreachable(job.now, "node1"))
    job.at(30.0)
    job.heartbeat("node0")
    job.tick()
    assert job.m.plan.generation.number == 1  # below --min-nodes 2: no generation forms, nothing shrinks further
    assert job.m.job_state == "running"


def test_grow_a_returning_node_opens_a_generation_that_takes_it_in() -> None:
    job = Job(target_nodes=2, min_nodes=1, replace_timeout_s=0.0).running("node0", "node1")
    job.fx(job.m.on_agent_unreachable(1.0, "node1"))
    job.at(1.0)
    assert job.join("node0") is not None  # replace timeout 0: shrinks at once to one node
    assert job.m.plan is not None and job.m.plan.generation.world_size == 1
    job.at(5.0)
    job.register("node3")
    assert job.m.membership.pending  # a free slot filled: grow back
    assignments = job.form("node0", "node3")
    assert job.m.plan.generation.number == 2 and {a.world_size for a in assignments.values()} == {2}


def test_hang_verdict_kills_the_stuck_rank_not_the_peers_waiting_on_it() -> None:
    job = Job(hang_timeout_s=30.0).running("node0", "node1")
    delivered: dict[str, list[str]] = {"node0": [], "node1": []}
    for t in range(0, 40, 2):
        job.at(float(t))
        job.pulse("node0", 0, 3, in_collective=True)  # blocked in the step's all-reduce
        job.pulse("node1", 1, 3, in_collective=False)  # pulsing, but no step progress, outside any collective
        for node in delivered:  # agents get their commands with the heartbeat reply
            delivered[node] += job.heartbeat(node).commands
        job.tick()
        if t < 30:
            assert not job.m.membership.pending, t
    assert delivered == {"node0": [], "node1": ["kill-trainer:0"]}
    assert "hang-peers" in job.kinds() and job.m.membership.pending
    failures = [e for fx in job.effects for e in fx.events if e.kind == "failure"]
    assert len(failures) == 1 and failures[0].extra == {"failure_kind": "hang", "rank": 1}
    assert "hung: no step progress for 30.0 s" in failures[0].message


def test_a_frozen_member_of_a_forming_generation_is_killed_so_the_generation_forms() -> None:
    job = Job(hang_timeout_s=30.0).running("node0", "node1")
    job.pulse("node0", 0, 1), job.pulse("node1", 1, 1)
    job.fx(job.m.on_failure_report(1.0, pb.FailureReport(generation=0, rank=0, reason="timeout")))
    job.at(1.0)
    job.join("node0")  # node1's trainer never joins: its process is SIGSTOPped
    for t in (3.0, 5.0, 6.5):
        job.at(t)
        job.pulse("node0", 0, 1)
        job.tick()
    assert job.m.commands.get("node1") == ["kill-trainer:0"]
    assert any("frozen: no pulse from its process" in e.message for fx in job.effects for e in fx.events)
    job.restart_trainer("node1")
    assert job.join("node1") is not None and job.m.plan is not None and job.m.plan.generation.number == 1


def test_restart_mode_orders_every_agent_to_restart_and_gives_each_generation_a_store() -> None:
    job = Job(recovery="restart")
    job.m.provide_store("127.0.0.1:7000")  # the host provides the first generation's store
    job.running("node0", "node1")
    assert [fx.need_store for fx in job.effects].count(True) == 1  # and one for the next, once g0 formed
    job.m.provide_store("127.0.0.1:7001")
    assert job.m.plan is not None and job.m.plan.store_address == "127.0.0.1:7000"
    assert job.join("node1", first=False) is not None
    job.fx(job.m.on_trainer_exit(1.0, pb.TrainerExit(node_id="node0", local_rank=0, exit_code=1, will_restart=True,
                                                     uptime_s=1.0))[1])
    job.at(1.2)
    job.tick()
    assert job.m.commands == {"node0": ["restart-trainers:1"], "node1": ["restart-trainers:1"]}
    job.tick()  # ordered once per generation
    assert job.m.commands == {"node0": ["restart-trainers:1"], "node1": ["restart-trainers:1"]}
    job.restart_trainer("node0"), job.restart_trainer("node1")
    job.known = {}
    assert job.join("node0") is None
    forming = job.join("node1")  # this call forms generation 1: its answer already names the new store
    assert forming is not None and (forming.generation, forming.store_address) == (1, "127.0.0.1:7001")
    other = job.join("node0", first=False)
    assert other is not None and other.store_address == "127.0.0.1:7001" and job.m.next_store == ""


def test_restart_mode_a_process_that_rejoins_before_its_restart_does_not_form_the_next_generation() -> None:
    """A rank whose restore failed while its generation formed asks to join again at once; the
    restart order for the next generation has gone out. The old processes' joins must not form
    that generation (their agents are about to kill them, and it would hold dead ranks until the
    pulse check caught them, 6 s later): the restarted processes form it."""
    job = Job(recovery="restart")
    job.m.provide_store("127.0.0.1:7000")
    job.running("node0", "node1")
    job.m.provide_store("127.0.0.1:7001")
    _restore_fails(job, "node1", 1)
    job.known = {}
    # the old processes ask again at once, before any tick: the restart is ordered first, their joins not counted
    assert job.join("node0") is None and job.join("node1") is None
    assert job.m.commands == {"node0": ["restart-trainers:1"], "node1": ["restart-trainers:1"]}
    assert job.join("node1", first=False) is None and job.m.membership.pending
    job.restart_trainer("node0"), job.restart_trainer("node1")
    job.at(1.0)
    job.known = {}
    assert job.join("node0") is None
    formed = job.join("node1")
    assert formed is not None and formed.generation == 1
    assert {a.trainer_uid for a in job.m.plan.generation.ranks} == {job.uid("node0"), job.uid("node1")}


def test_job_completes_when_every_rank_finished_at_one_step() -> None:
    job = Job(inject=(parse_fault("kill-node:1@step=100"), parse_fault("slow-rank:0x2.0"))).running("node0", "node1")
    job.snapshot("node0", 0, 60), job.snapshot("node1", 1, 60)
    job.finished(0, 60)
    assert job.m.job_state == "running"
    job.finished(1, 60)
    assert job.m.job_state == "complete" and "job-complete" in job.kinds()
    unfired = [e for fx in job.effects for e in fx.events if e.kind == "fault-not-fired"]
    assert len(unfired) == 1 and unfired[0].warning and "kill-node:1@step=100" in unfired[0].message
    assert job.heartbeat("node0").job_state == pb.JOB_STATE_COMPLETE
    request = pb.JoinRequest(trainer_uid=job.uid("node0"), node_id="node0", known_generation=0)
    assignment, _ = job.m.on_join(job.now, request, True)
    assert assignment is not None and assignment.status == pb.ASSIGNMENT_STATUS_COMPLETE


def test_a_rank_that_left_the_loop_while_another_went_on_fails_the_job() -> None:
    job = Job().running("node0", "node1")
    job.pulse("node1", 1, 11, in_collective=True)  # rank 1 waits in step 11's all-reduce
    job.finished(0, 10)  # rank 0 broke out of the loop after step 10
    job.tick()
    assert job.m.job_state == "failed" and "rank" in job.m.message


def test_job_fails_when_more_nodes_are_lost_than_the_code_tolerates() -> None:
    job = Job(target_nodes=3, min_nodes=1, replace_timeout_s=0.0).running("node0", "node1", "node2")
    for rank, node in enumerate(("node0", "node1", "node2")):
        job.snapshot(node, rank, 4, shards=("node1", "node2"))  # k=1, m=1 on node1 and node2
    job.fx(job.m.on_agent_unreachable(1.0, "node1"))
    job.fx(job.m.on_agent_unreachable(1.0, "node2"))
    job.at(1.0)
    assignment = job.join("node0")
    assert job.m.job_state == "failed" and assignment is not None and assignment.status == pb.ASSIGNMENT_STATUS_FAILED
    assert job.m.message.startswith("unrecoverable: more simultaneous losses than the erasure code tolerates")
    assert "Last committed step 4" in job.m.message
    ack, _ = job.m.on_trainer_exit(2.0, pb.TrainerExit(node_id="node0", exit_code=1, will_restart=True))
    assert not ack.ok  # the agent restarts nothing


def test_the_same_user_error_after_a_restart_fails_the_job_with_one_traceback_per_attempt() -> None:
    job = Job().running("node0", "node1")
    error = UserError(generation=0, rank=1, step=3, error_type="ValueError", message="bad batch")
    (print_first, message), _ = job.m.on_user_error(1.0, error)
    assert print_first and not message and job.m.job_state == "running"
    (print_again, _), _ = job.m.on_user_error(1.0, replace(error, rank=0))
    assert not print_again  # the other rank's copy of the same traceback is not printed
    (print_second, message), fx = job.m.on_user_error(5.0, replace(error, generation=1))
    assert print_second and job.m.job_state == "failed" and "ValueError" in message
    assert "job-failed" in [e.kind for e in fx.events]


def test_a_startup_failure_fails_the_job_before_any_generation_forms() -> None:
    job = Job()
    job.register("node0")
    job.at(3.0)
    ack, fx = job.m.on_trainer_exit(job.now, pb.TrainerExit(node_id="node0", local_rank=0, exit_code=2,
                                                            will_restart=True, uptime_s=0.4))
    assert not ack.ok and job.m.job_state == "failed" and "job-failed" in [e.kind for e in fx.events]


def test_each_injected_fault_fires_once_and_unknown_ones_never() -> None:
    job = Job(inject=(parse_fault("kill-rank:1@step=5"),))
    ok, fx = job.m.on_fault_claim(pb.FaultClaim(fault="kill-rank:1@step=5", rank=1, step=5))
    assert ok and [e.kind for e in fx.events] == ["inject"]
    assert not job.m.on_fault_claim(pb.FaultClaim(fault="kill-rank:1@step=5", rank=1, step=5))[0]
    assert not job.m.on_fault_claim(pb.FaultClaim(fault="kill-node:0@step=1"))[0]


def test_a_live_member_that_never_joins_the_forming_generation_is_killed_after_the_bound() -> None:
    job = Job(hang_timeout_s=40.0).running("node0", "node1")
    job.fx(job.m.on_failure_report(1.0, pb.FailureReport(generation=0, rank=1, reason="timeout")))
    job.at(1.0)
    job.join("node0")
    for t in range(2, 42):  # node1's trainer pulses (not frozen) but is stuck outside ftrain: it never joins
        job.at(float(t))
        job.pulse("node0", 0, 1), job.pulse("node1", 1, 1)
        job.heartbeat("node0"), job.heartbeat("node1")
        job.tick()
        if t < 41:  # the bound is max(30 s, the hang timeout) from when the generation opened
            assert not job.m.commands.get("node1"), t
    assert job.m.commands.get("node1") == ["kill-trainer:0"]
    assert any("did not join the new generation within 40 s" in e.message for fx in job.effects for e in fx.events)
    job.at(42.0)
    job.tick()
    assert job.m.commands.get("node1") == ["kill-trainer:0"]  # killed once, not at every tick


def test_a_restarted_coordinator_goes_on_from_the_jobs_durable_checkpoints() -> None:
    from ftrain.snapshot.durable import Checkpoint

    job = Job(checkpoint_dir="/ckpt", checkpoint_every=10)
    assert job.m.durable is not None and job.m.durable.last_step == -1
    job.m.durable_found = Checkpoint("/ckpt/step-000000020", 20, 2, 0, "unit", ())
    # the agents of the running job re-register with the shards of committed step 20 (k=1, m=1)
    blobs = [pb.BlobInfo(blob_id=f"s20-g0-r{r}", step=20, producer_rank=r, producer_world_size=2, k=1, m=1,
                         generation=0, shards=[pb.ShardLocation(index=i, node_id=f"node{i}") for i in range(2)])
             for r in range(2)]
    for node in ("node0", "node1"):
        held = [pb.HeldShard(blob_info=b.SerializeToString(), index=int(node[-1])) for b in blobs]
        _, fx = job.m.on_register(0.0, pb.RegisterAgentRequest(node_id=node, address=f"{node}:1", nproc=1, slot=-1,
                                                                generation=0, held=held))
        job.fx(fx)
    assert job.m.catalog.newest_committed == 20
    assert job.m.durable.last_step == 20 and not job.m.durable.due(25, 1.0) and job.m.durable.due(30, 1.0)
    assert job.metric("checkpoint_last_step")[-1] == 20


def test_a_skipped_snapshot_never_commits_and_training_goes_on_from_the_older_one() -> None:
    job = Job().running("node0", "node1")
    assert job.snapshot("node0", 0, 0) and job.snapshot("node1", 1, 0)
    assert job.snapshot("node0", 0, 1)  # rank 0's blob of step 1 is stored; rank 1's does not fit
    accepted, fx = job.m.on_snapshot(job.now, pb.SnapshotReport(
        trainer_uid=job.uid("node1"), generation=0, rank=1, step=1, skipped="node0: snapshot memory limit reached"))
    job.fx(fx)
    assert accepted and fx.wake and job.m.commit_wait_over(1, 0)  # rank 0, waiting for step 1's commit, goes on
    assert job.m.catalog.newest_committed == 0 and job.m.job_state == "running"
    assert "snapshot-skipped" in job.kinds() and job.metric("snapshots_skipped") == [1.0]
    assert list(job.heartbeat("node0").skipped_steps) == [1]  # agents drop what they hold of step 1
    job.snapshot("node1", 1, 1)  # a late report of the skipped step commits nothing
    assert job.m.catalog.newest_committed == 0
    assert job.snapshot("node0", 0, 2) and job.snapshot("node1", 1, 2)  # the next step that fits commits
    assert job.m.catalog.newest_committed == 2
    job.fx(job.m.on_failure_report(job.now, pb.FailureReport(generation=0, rank=0, reason="peer closed")))
    assignments = job.form("node0", "node1")
    assert assignments["node0"].restore_step == 2 and list(job.heartbeat("node0").skipped_steps) == []


def test_a_first_snapshot_that_does_not_fit_fails_the_job_at_once_saying_why() -> None:
    job = Job().running("node0", "node1")
    _, fx = job.m.on_snapshot(job.now, pb.SnapshotReport(trainer_uid=job.uid("node0"), generation=0, rank=0, step=0,
                                                         skipped="node1: snapshot memory limit reached"))
    job.fx(fx)
    assert job.m.job_state == "failed" and "the first snapshot (step 0) does not fit" in job.m.message
    assert "snapshot memory limit" in job.m.message


def test_agents_keep_only_the_checkpointed_step_besides_the_newest_while_a_checkpoint_is_written() -> None:
    job = Job(checkpoint_dir="/ckpt", checkpoint_every=10).running("node0", "node1")
    for step in range(0, 11):
        assert job.snapshot("node0", 0, step) and job.snapshot("node1", 1, step)
    assert job.m.durable is not None and job.m.durable.in_flight is not None
    assert job.m.durable.in_flight.step == 10  # due, ordered, not yet written
    for step in range(11, 31):  # the checkpoint takes long: 20 more steps commit meanwhile
        job.snapshot("node0", 0, step)
        job.snapshot("node1", 1, step)
    reply = job.heartbeat("node0")
    assert reply.min_retained_step == job.m.catalog.min_retained_step() > 20  # not held back to step 10
    assert list(reply.pinned_steps) == [10]  # only the step being written stays besides the newest
    assert reply.checkpoint_pending


def _restore_fails(job: Job, node: str, rank: int) -> None:
    generation = job.m.plan.generation.number if job.m.plan else -1
    job.fx(job.m.on_failure_report(job.now, pb.FailureReport(
        trainer_uid=job.uid(node), generation=generation, rank=rank, restore_failed=True,
        reason="snapshot lost: blob s9-r1: 2 of 3 shards failed their checksum, needs 2")))


def test_a_step_whose_restore_keeps_failing_is_given_up_for_the_previous_committed_one() -> None:
    job = Job().running("node0", "node1")
    for step in (8, 9):
        job.snapshot("node0", 0, step), job.snapshot("node1", 1, step)
    job.fx(job.m.on_failure_report(job.now, pb.FailureReport(generation=0, rank=1, reason="peer closed")))
    job.at(1.0)
    assert {a.restore_step for a in job.form("node0", "node1").values()} == {9}
    _restore_fails(job, "node1", 1)
    _restore_fails(job, "node1", 1)  # the same generation twice counts once
    assert job.m.membership.pending and job.m.catalog.committed_steps == [8, 9]
    job.at(1.5)
    assert {a.restore_step for a in job.form("node0", "node1").values()} == {9}  # one more try of step 9
    _restore_fails(job, "node0", 0)
    assert job.m.catalog.committed_steps == [8] and job.m.job_state == "running"
    assert job.kinds().count("restore-failed") == 2 and job.kinds().count("snapshot-unusable") == 1
    job.at(2.0)
    assignments = job.form("node0", "node1")
    assert {a.restore_step for a in assignments.values()} == {8}
    assert [b.blob_id for b in assignments["node0"].restore_blobs] == ["s8-r0", "s8-r1"]


def test_a_given_up_step_stays_given_up_after_a_coordinator_restart() -> None:
    """Agents drop the shards of a step given up (heartbeat `dropped_blobs`), as the agent's real
    store does it; a restarted coordinator that rebuilds its catalog from what they hold then
    restores the older step, not the one whose restores kept failing."""
    from ftrain.agent.store import ShardStore

    job = Job().running("node0", "node1")
    stores = {"node0": ShardStore(), "node1": ShardStore()}
    for step in (8, 9):
        job.snapshot("node0", 0, step, shards=("node0", "node1")), job.snapshot("node1", 1, step, shards=("node0", "node1"))
        for record in job.m.catalog.blobs(step):  # shard i of each blob on node i, as the trainers put them
            for index, node in enumerate(("node0", "node1")):
                stores[node].put(record.info.blob_id, index, step, bytearray(10), 0, record.info.SerializeToString())

    def rebuilt() -> list[int]:
        restarted = Job()
        for node, store in stores.items():
            held = [pb.HeldShard(blob_info=info, index=index) for info, index in store.held()]
            _, fx = restarted.m.on_register(0.0, pb.RegisterAgentRequest(node_id=node, address=f"{node}:1", nproc=1,
                                                                         slot=-1, generation=0, held=held))
        return restarted.m.catalog.committed_steps

    assert rebuilt() == [8, 9]
    job.fx(job.m.on_failure_report(job.now, pb.FailureReport(generation=0, rank=1, reason="peer closed")))
    for attempt in range(2):
        job.at(1.0 + attempt)
        job.form("node0", "node1")
        _restore_fails(job, "node1", 1)
    assert job.m.catalog.committed_steps == [8] and "snapshot-unusable" in job.kinds()
    for node, store in stores.items():  # what the agent does with each heartbeat reply
        reply = job.heartbeat(node)
        assert list(reply.dropped_blobs) == ["s9-r0", "s9-r1"]
        store.drop_older_than(reply.min_retained_step, reply.skipped_steps, reply.pinned_steps, reply.dropped_blobs)
    assert rebuilt() == [8]


def test_the_job_fails_saying_why_when_no_restorable_step_is_left() -> None:
    job = Job().running("node0", "node1")
    job.snapshot("node0", 0, 9), job.snapshot("node1", 1, 9)
    job.fx(job.m.on_failure_report(job.now, pb.FailureReport(generation=0, rank=0, reason="peer closed")))
    for attempt in range(2):
        job.at(1.0 + attempt)
        job.form("node0", "node1")
        _restore_fails(job, "node1", 1)
    assert job.m.job_state == "failed"
    assert job.m.message.startswith("unrecoverable: the snapshot of step 9 could not be restored in 2 generations")
    assert "2 of 3 shards failed their checksum" in job.m.message and "no older committed step" in job.m.message
    assignment = job.join("node0")
    assert assignment is not None and assignment.status == pb.ASSIGNMENT_STATUS_FAILED


def _checkpoint(step: int, world_size: int, dcp: bool) -> durable_files.Checkpoint:
    path = f"/ckpt/step-{step}"
    parts = tuple(durable_files.Part(r, f"{path}/rank-{r}.bin", 100, 7) for r in range(world_size))
    return durable_files.Checkpoint(path, step, world_size, 0, "unit", parts, f"{path}/dcp" if dcp else "")


def test_a_resumed_checkpoint_that_cannot_be_restored_falls_back_to_an_older_one() -> None:
    """`--resume` of a 4-rank checkpoint with no DCP copy on 2 ranks (per-rank FSDP2 state cannot
    move there): after its restores failed, the job resumes from the newest older checkpoint that
    has a DCP copy, passing over a newer one without."""
    job = Job()
    newest, middle, oldest = _checkpoint(20, 4, dcp=False), _checkpoint(15, 4, dcp=False), _checkpoint(10, 4, dcp=True)
    job.fx(job.m.resume_from(0.0, newest, [oldest, middle]))
    job.running("node0", "node1")
    for attempt in range(2):
        assignments = job.form("node0", "node1") if attempt else {"node0": job.m.assignment(job.m.plan, 0)}
        assert assignments["node0"].restore_step == 20
        assert assignments["node0"].restore_blobs[0].path == "/ckpt/step-20/rank-0.bin"
        _restore_fails(job, "node0", 0)
        job.at(1.0 + attempt)
    assert "resume-fallback" in job.kinds() and job.m.job_state == "running"
    assignments = job.form("node0", "node1")
    assert {a.restore_step for a in assignments.values()} == {10}
    assert [b.path for b in assignments["node1"].restore_blobs] == [f"/ckpt/step-10/rank-{r}.bin" for r in range(4)]
    assert (job.m.durable_status() or {})["resumed_from"] == 10
    # should step 10 fail as well, the one left (step 15) is tried; after it, the job fails saying why
    for attempt in range(2):
        _restore_fails(job, "node0", 0)
        job.at(3.0 + attempt)
        assignments = job.form("node0", "node1")
    assert {a.restore_step for a in assignments.values()} == {15}
    for attempt in range(2):
        _restore_fails(job, "node0", 0)
        job.at(5.0 + attempt)
        if attempt == 0:
            job.form("node0", "node1")
    assert job.m.job_state == "failed" and "step 15 could not be restored" in job.m.message


def test_a_fallback_at_the_same_world_size_takes_the_newest_older_checkpoint() -> None:
    job = Job(target_nodes=4, min_nodes=4)
    job.fx(job.m.resume_from(0.0, _checkpoint(20, 4, dcp=False), [_checkpoint(10, 4, dcp=True),
                                                                   _checkpoint(15, 4, dcp=False)]))
    nodes = ("node0", "node1", "node2", "node3")
    job.running(*nodes)
    _restore_fails(job, "node0", 0)
    job.at(1.0)
    job.form(*nodes)
    _restore_fails(job, "node0", 0)
    job.at(2.0)
    assert {a.restore_step for a in job.form(*nodes).values()} == {15}
