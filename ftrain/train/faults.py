"""`--inject` on the trainer side: which of the job's fault specs a rank fires, and firing them.

`FaultPlan` (pure) is made from a generation's assignment: the specs this rank or its node is
the target of, and its `slow-rank` factor. At a step's fault point (or as the rank enters a
generation, for `@gen=G`) `due` lists the specs to fire; the trainer claims each one from the
coordinator (every spec fires once in the job) and `fire` carries it out.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Sequence

from ftrain.config import FaultSpec, parse_fault

log = logging.getLogger("ftrain.session")


@dataclass
class FaultPlan:
    rank: int = 0
    node_index: int = -1  # this trainer's node among the generation's members
    local_rank: int = 0
    faults: list[FaultSpec] = field(default_factory=list)

    @classmethod
    def of(cls, inject: Sequence[str], rank: int, node_index: int, local_rank: int) -> "FaultPlan":
        return cls(rank, node_index, local_rank, [parse_fault(spec) for spec in inject])

    @property
    def slow_factor(self) -> float:
        """How much slower this rank's loop body runs (`slow-rank:R xF`), 1.0 when not slowed."""
        return max([f.factor or 1.0 for f in self.faults if f.kind == "slow-rank" and f.target == self.rank],
                   default=1.0)

    def due(self, step: int, entering_generation: int | None = None) -> list[FaultSpec]:
        """The specs this trainer fires at `step`'s fault point, or as it enters a generation."""
        out = []
        for fault in self.faults:
            if entering_generation is not None:
                if fault.generation != entering_generation:
                    continue
            elif fault.step != step or fault.generation is not None:
                continue
            if (fault.kind in ("kill-rank", "hang-rank") and fault.target == self.rank
                    or fault.kind == "kill-node" and fault.target == self.node_index and self.local_rank == 0
                    or fault.kind == "corrupt-shard" and self.rank == 0):
                out.append(fault)
        return out


def fire(fault: FaultSpec, agents: Any, members: Sequence[Any], step: int) -> None:
    """Carries out a claimed fault: SIGKILL this process (kill-rank) or its process group, i.e. its
    node's agent and trainers (kill-node); SIGSTOP it (hang-rank); or corrupt the shards of `step`
    held by the target node's agent (corrupt-shard; `agents`: an ftrain.snapshot.transfer.AgentPool)."""
    log.warning("injecting %s", fault.raw)
    if fault.kind == "kill-rank":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.kind == "kill-node":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    elif fault.kind == "hang-rank":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif fault.kind == "corrupt-shard" and 0 <= fault.target < len(members):
        hit = agents.corrupt(members[fault.target].address, step)
        log.warning("corrupted %d shard(s) on node %s", len(hit), members[fault.target].node_id)
