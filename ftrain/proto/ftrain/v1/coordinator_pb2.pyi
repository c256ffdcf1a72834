from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_COMPLETE: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]

class TrainerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINER_STATE_UNSPECIFIED: _ClassVar[TrainerState]
    TRAINER_STATE_RUNNING: _ClassVar[TrainerState]
    TRAINER_STATE_EXITED: _ClassVar[TrainerState]
    TRAINER_STATE_RESTARTING: _ClassVar[TrainerState]
    TRAINER_STATE_FINISHED: _ClassVar[TrainerState]
    TRAINER_STATE_JOINING: _ClassVar[TrainerState]

class CheckpointKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKPOINT_KIND_UNSPECIFIED: _ClassVar[CheckpointKind]
    CHECKPOINT_KIND_WRITE: _ClassVar[CheckpointKind]
    CHECKPOINT_KIND_FINALIZE: _ClassVar[CheckpointKind]

class AssignmentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSIGNMENT_STATUS_UNSPECIFIED: _ClassVar[AssignmentStatus]
    ASSIGNMENT_STATUS_OK: _ClassVar[AssignmentStatus]
    ASSIGNMENT_STATUS_WAIT: _ClassVar[AssignmentStatus]
    ASSIGNMENT_STATUS_COMPLETE: _ClassVar[AssignmentStatus]
    ASSIGNMENT_STATUS_FAILED: _ClassVar[AssignmentStatus]

class WelcomeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WELCOME_STATUS_UNSPECIFIED: _ClassVar[WelcomeStatus]
    WELCOME_STATUS_OK: _ClassVar[WelcomeStatus]
    WELCOME_STATUS_INIT: _ClassVar[WelcomeStatus]
    WELCOME_STATUS_RESTORING: _ClassVar[WelcomeStatus]

class PushStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUSH_STATUS_UNSPECIFIED: _ClassVar[PushStatus]
    PUSH_STATUS_APPLIED: _ClassVar[PushStatus]
    PUSH_STATUS_IGNORED: _ClassVar[PushStatus]
    PUSH_STATUS_DONE: _ClassVar[PushStatus]
    PUSH_STATUS_REBASE: _ClassVar[PushStatus]

class ModelStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATUS_UNSPECIFIED: _ClassVar[ModelStatus]
    MODEL_STATUS_OK: _ClassVar[ModelStatus]
    MODEL_STATUS_UNCHANGED: _ClassVar[ModelStatus]
    MODEL_STATUS_WAIT: _ClassVar[ModelStatus]
    MODEL_STATUS_UNINITIALIZED: _ClassVar[ModelStatus]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_COMPLETE: JobState
JOB_STATE_FAILED: JobState
TRAINER_STATE_UNSPECIFIED: TrainerState
TRAINER_STATE_RUNNING: TrainerState
TRAINER_STATE_EXITED: TrainerState
TRAINER_STATE_RESTARTING: TrainerState
TRAINER_STATE_FINISHED: TrainerState
TRAINER_STATE_JOINING: TrainerState
CHECKPOINT_KIND_UNSPECIFIED: CheckpointKind
CHECKPOINT_KIND_WRITE: CheckpointKind
CHECKPOINT_KIND_FINALIZE: CheckpointKind
ASSIGNMENT_STATUS_UNSPECIFIED: AssignmentStatus
ASSIGNMENT_STATUS_OK: AssignmentStatus
ASSIGNMENT_STATUS_WAIT: AssignmentStatus
ASSIGNMENT_STATUS_COMPLETE: AssignmentStatus
ASSIGNMENT_STATUS_FAILED: AssignmentStatus
WELCOME_STATUS_UNSPECIFIED: WelcomeStatus
WELCOME_STATUS_OK: WelcomeStatus
WELCOME_STATUS_INIT: WelcomeStatus
WELCOME_STATUS_RESTORING: WelcomeStatus
PUSH_STATUS_UNSPECIFIED: PushStatus
PUSH_STATUS_APPLIED: PushStatus
PUSH_STATUS_IGNORED: PushStatus
PUSH_STATUS_DONE: PushStatus
PUSH_STATUS_REBASE: PushStatus
MODEL_STATUS_UNSPECIFIED: ModelStatus
MODEL_STATUS_OK: ModelStatus
MODEL_STATUS_UNCHANGED: ModelStatus
MODEL_STATUS_WAIT: ModelStatus
MODEL_STATUS_UNINITIALIZED: ModelStatus

class Ack(_message.Message):
    __slots__ = ("ok", "message")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class TrainerInfo(_message.Message):
    __slots__ = ("local_rank", "pid", "state", "exit_code", "last_step")
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    local_rank: int
    pid: int
    state: TrainerState
    exit_code: int
    last_step: int
    def __init__(self, local_rank: _Optional[int] = ..., pid: _Optional[int] = ..., state: _Optional[_Union[TrainerState, str]] = ..., exit_code: _Optional[int] = ..., last_step: _Optional[int] = ...) -> None: ...

class RegisterAgentRequest(_message.Message):
    __slots__ = ("job_id", "node_id", "address", "nproc", "hostname", "protocol_version", "metrics_address", "slot", "generation", "held", "ec_backend")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NPROC_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    EC_BACKEND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node_id: str
    address: str
    nproc: int
    hostname: str
    protocol_version: int
    metrics_address: str
    slot: int
    generation: int
    held: _containers.RepeatedCompositeFieldContainer[HeldShard]
    ec_backend: str
    def __init__(self, job_id: _Optional[str] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., nproc: _Optional[int] = ..., hostname: _Optional[str] = ..., protocol_version: _Optional[int] = ..., metrics_address: _Optional[str] = ..., slot: _Optional[int] = ..., generation: _Optional[int] = ..., held: _Optional[_Iterable[_Union[HeldShard, _Mapping]]] = ..., ec_backend: _Optional[str] = ...) -> None: ...

class HeldShard(_message.Message):
    __slots__ = ("blob_info", "index")
    BLOB_INFO_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    blob_info: bytes
    index: int
    def __init__(self, blob_info: _Optional[bytes] = ..., index: _Optional[int] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("node_id", "config")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    config: JobConfig
    def __init__(self, node_id: _Optional[str] = ..., config: _Optional[_Union[JobConfig, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "trainers", "shard_bytes", "checkpoint_results", "shard_limit_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINERS_FIELD_NUMBER: _ClassVar[int]
    SHARD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_RESULTS_FIELD_NUMBER: _ClassVar[int]
    SHARD_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    trainers: _containers.RepeatedCompositeFieldContainer[TrainerInfo]
    shard_bytes: int
    checkpoint_results: _containers.RepeatedCompositeFieldContainer[CheckpointResult]
    shard_limit_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., trainers: _Optional[_Iterable[_Union[TrainerInfo, _Mapping]]] = ..., shard_bytes: _Optional[int] = ..., checkpoint_results: _Optional[_Iterable[_Union[CheckpointResult, _Mapping]]] = ..., shard_limit_bytes: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("job_state", "min_retained_step", "commands", "message", "known", "slot", "generation", "checkpoint_orders", "checkpoint_pending", "skipped_steps", "pinned_steps", "dropped_blobs")
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    MIN_RETAINED_STEP_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ORDERS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PENDING_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_STEPS_FIELD_NUMBER: _ClassVar[int]
    PINNED_STEPS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BLOBS_FIELD_NUMBER: _ClassVar[int]
    job_state: JobState
    min_retained_step: int
    commands: _containers.RepeatedScalarFieldContainer[str]
    message: str
    known: bool
    slot: int
    generation: int
    checkpoint_orders: _containers.RepeatedCompositeFieldContainer[CheckpointOrder]
    checkpoint_pending: bool
    skipped_steps: _containers.RepeatedScalarFieldContainer[int]
    pinned_steps: _containers.RepeatedScalarFieldContainer[int]
    dropped_blobs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_state: _Optional[_Union[JobState, str]] = ..., min_retained_step: _Optional[int] = ..., commands: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ..., known: _Optional[bool] = ..., slot: _Optional[int] = ..., generation: _Optional[int] = ..., checkpoint_orders: _Optional[_Iterable[_Union[CheckpointOrder, _Mapping]]] = ..., checkpoint_pending: _Optional[bool] = ..., skipped_steps: _Optional[_Iterable[int]] = ..., pinned_steps: _Optional[_Iterable[int]] = ..., dropped_blobs: _Optional[_Iterable[str]] = ...) -> None: ...

class CheckpointOrder(_message.Message):
    __slots__ = ("kind", "step", "dir", "blob", "manifest_json", "keep", "dcp")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DIR_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    DCP_FIELD_NUMBER: _ClassVar[int]
    kind: CheckpointKind
    step: int
    dir: str
    blob: BlobInfo
    manifest_json: str
    keep: int
    dcp: bool
    def __init__(self, kind: _Optional[_Union[CheckpointKind, str]] = ..., step: _Optional[int] = ..., dir: _Optional[str] = ..., blob: _Optional[_Union[BlobInfo, _Mapping]] = ..., manifest_json: _Optional[str] = ..., keep: _Optional[int] = ..., dcp: _Optional[bool] = ...) -> None: ...

class CheckpointResult(_message.Message):
    __slots__ = ("kind", "step", "rank", "ok", "reason", "file", "bytes", "seconds", "crc32", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: CheckpointKind
    step: int
    rank: int
    ok: bool
    reason: str
    file: str
    bytes: int
    seconds: float
    crc32: int
    detail: str
    def __init__(self, kind: _Optional[_Union[CheckpointKind, str]] = ..., step: _Optional[int] = ..., rank: _Optional[int] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., file: _Optional[str] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ..., crc32: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class TrainerExit(_message.Message):
    __slots__ = ("node_id", "local_rank", "pid", "exit_code", "will_restart", "uptime_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    WILL_RESTART_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    local_rank: int
    pid: int
    exit_code: int
    will_restart: bool
    uptime_s: float
    def __init__(self, node_id: _Optional[str] = ..., local_rank: _Optional[int] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., will_restart: _Optional[bool] = ..., uptime_s: _Optional[float] = ...) -> None: ...

class JobConfig(_message.Message):
    __slots__ = ("job_id", "target_nodes", "min_nodes", "snapshot_every", "ec_k", "ec_m", "mode", "strategy", "inject", "collective_timeout_s", "compress", "recovery", "snapshot_memory", "standby_trainers")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODES_FIELD_NUMBER: _ClassVar[int]
    MIN_NODES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_EVERY_FIELD_NUMBER: _ClassVar[int]
    EC_K_FIELD_NUMBER: _ClassVar[int]
    EC_M_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    INJECT_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_MEMORY_FIELD_NUMBER: _ClassVar[int]
    STANDBY_TRAINERS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    target_nodes: int
    min_nodes: int
    snapshot_every: int
    ec_k: int
    ec_m: int
    mode: str
    strategy: str
    inject: _containers.RepeatedScalarFieldContainer[str]
    collective_timeout_s: float
    compress: str
    recovery: str
    snapshot_memory: str
    standby_trainers: bool
    def __init__(self, job_id: _Optional[str] = ..., target_nodes: _Optional[int] = ..., min_nodes: _Optional[int] = ..., snapshot_every: _Optional[int] = ..., ec_k: _Optional[int] = ..., ec_m: _Optional[int] = ..., mode: _Optional[str] = ..., strategy: _Optional[str] = ..., inject: _Optional[_Iterable[str]] = ..., collective_timeout_s: _Optional[float] = ..., compress: _Optional[str] = ..., recovery: _Optional[str] = ..., snapshot_memory: _Optional[str] = ..., standby_trainers: _Optional[bool] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("trainer_uid", "node_id", "local_rank", "known_generation", "wait_s")
    TRAINER_UID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    KNOWN_GENERATION_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    trainer_uid: str
    node_id: str
    local_rank: int
    known_generation: int
    wait_s: float
    def __init__(self, trainer_uid: _Optional[str] = ..., node_id: _Optional[str] = ..., local_rank: _Optional[int] = ..., known_generation: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class ShardLocation(_message.Message):
    __slots__ = ("index", "node_id", "address", "crc32")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    index: int
    node_id: str
    address: str
    crc32: int
    def __init__(self, index: _Optional[int] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., crc32: _Optional[int] = ...) -> None: ...

class BlobInfo(_message.Message):
    __slots__ = ("blob_id", "step", "producer_rank", "producer_world_size", "producer_trainer", "producer_node", "size", "k", "m", "shard_len", "shards", "crc32", "source_rank", "source_holds_local", "generation", "compression", "raw_size", "path")
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_RANK_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_TRAINER_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_NODE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    SHARD_LEN_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RANK_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HOLDS_LOCAL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    RAW_SIZE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    blob_id: str
    step: int
    producer_rank: int
    producer_world_size: int
    producer_trainer: str
    producer_node: str
    size: int
    k: int
    m: int
    shard_len: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardLocation]
    crc32: int
    source_rank: int
    source_holds_local: bool
    generation: int
    compression: str
    raw_size: int
    path: str
    def __init__(self, blob_id: _Optional[str] = ..., step: _Optional[int] = ..., producer_rank: _Optional[int] = ..., producer_world_size: _Optional[int] = ..., producer_trainer: _Optional[str] = ..., producer_node: _Optional[str] = ..., size: _Optional[int] = ..., k: _Optional[int] = ..., m: _Optional[int] = ..., shard_len: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardLocation, _Mapping]]] = ..., crc32: _Optional[int] = ..., source_rank: _Optional[int] = ..., source_holds_local: _Optional[bool] = ..., generation: _Optional[int] = ..., compression: _Optional[str] = ..., raw_size: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("node_id", "address", "first_rank", "nproc")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RANK_FIELD_NUMBER: _ClassVar[int]
    NPROC_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    first_rank: int
    nproc: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., first_rank: _Optional[int] = ..., nproc: _Optional[int] = ...) -> None: ...

class GenerationAssignment(_message.Message):
    __slots__ = ("status", "generation", "rank", "world_size", "store_address", "restore_step", "restore_blobs", "members", "config", "message", "batch_shares")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    STORE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_STEP_FIELD_NUMBER: _ClassVar[int]
    RESTORE_BLOBS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SHARES_FIELD_NUMBER: _ClassVar[int]
    status: AssignmentStatus
    generation: int
    rank: int
    world_size: int
    store_address: str
    restore_step: int
    restore_blobs: _containers.RepeatedCompositeFieldContainer[BlobInfo]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    config: JobConfig
    message: str
    batch_shares: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, status: _Optional[_Union[AssignmentStatus, str]] = ..., generation: _Optional[int] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., store_address: _Optional[str] = ..., restore_step: _Optional[int] = ..., restore_blobs: _Optional[_Iterable[_Union[BlobInfo, _Mapping]]] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., config: _Optional[_Union[JobConfig, _Mapping]] = ..., message: _Optional[str] = ..., batch_shares: _Optional[_Iterable[int]] = ...) -> None: ...

class FailureReport(_message.Message):
    __slots__ = ("trainer_uid", "generation", "rank", "reason", "restore_failed")
    TRAINER_UID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FAILED_FIELD_NUMBER: _ClassVar[int]
    trainer_uid: str
    generation: int
    rank: int
    reason: str
    restore_failed: bool
    def __init__(self, trainer_uid: _Optional[str] = ..., generation: _Optional[int] = ..., rank: _Optional[int] = ..., reason: _Optional[str] = ..., restore_failed: _Optional[bool] = ...) -> None: ...

class SnapshotReport(_message.Message):
    __slots__ = ("trainer_uid", "generation", "rank", "step", "blob", "compute_time_s", "stall_s", "snapshot_duration_s", "steps_covered", "wait_commit_s", "skipped")
    TRAINER_UID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    STALL_S_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    STEPS_COVERED_FIELD_NUMBER: _ClassVar[int]
    WAIT_COMMIT_S_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    trainer_uid: str
    generation: int
    rank: int
    step: int
    blob: BlobInfo
    compute_time_s: float
    stall_s: float
    snapshot_duration_s: float
    steps_covered: int
    wait_commit_s: float
    skipped: str
    def __init__(self, trainer_uid: _Optional[str] = ..., generation: _Optional[int] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., blob: _Optional[_Union[BlobInfo, _Mapping]] = ..., compute_time_s: _Optional[float] = ..., stall_s: _Optional[float] = ..., snapshot_duration_s: _Optional[float] = ..., steps_covered: _Optional[int] = ..., wait_commit_s: _Optional[float] = ..., skipped: _Optional[str] = ...) -> None: ...

class SnapshotAck(_message.Message):
    __slots__ = ("accepted", "current_generation", "last_committed_step")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    current_generation: int
    last_committed_step: int
    def __init__(self, accepted: _Optional[bool] = ..., current_generation: _Optional[int] = ..., last_committed_step: _Optional[int] = ...) -> None: ...

class WaitCommittedRequest(_message.Message):
    __slots__ = ("step", "generation", "wait_s")
    STEP_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    step: int
    generation: int
    wait_s: float
    def __init__(self, step: _Optional[int] = ..., generation: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class WaitCommittedResponse(_message.Message):
    __slots__ = ("committed", "current_generation", "last_committed_step", "skipped")
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    committed: bool
    current_generation: int
    last_committed_step: int
    skipped: bool
    def __init__(self, committed: _Optional[bool] = ..., current_generation: _Optional[int] = ..., last_committed_step: _Optional[int] = ..., skipped: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("known_generation", "wait_s")
    KNOWN_GENERATION_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    known_generation: int
    wait_s: float
    def __init__(self, known_generation: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("generation", "job_state")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    generation: int
    job_state: JobState
    def __init__(self, generation: _Optional[int] = ..., job_state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ProgressReport(_message.Message):
    __slots__ = ("trainer_uid", "generation", "rank", "step", "compute_time_s", "in_collective", "pulse")
    TRAINER_UID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    IN_COLLECTIVE_FIELD_NUMBER: _ClassVar[int]
    PULSE_FIELD_NUMBER: _ClassVar[int]
    trainer_uid: str
    generation: int
    rank: int
    step: int
    compute_time_s: float
    in_collective: bool
    pulse: bool
    def __init__(self, trainer_uid: _Optional[str] = ..., generation: _Optional[int] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., compute_time_s: _Optional[float] = ..., in_collective: _Optional[bool] = ..., pulse: _Optional[bool] = ...) -> None: ...

class FaultClaim(_message.Message):
    __slots__ = ("trainer_uid", "fault", "rank", "step")
    TRAINER_UID_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    trainer_uid: str
    fault: str
    rank: int
    step: int
    def __init__(self, trainer_uid: _Optional[str] = ..., fault: _Optional[str] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class UserErrorReport(_message.Message):
    __slots__ = ("trainer_uid", "generation", "rank", "step", "error_type", "error_message")
    TRAINER_UID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    trainer_uid: str
    generation: int
    rank: int
    step: int
    error_type: str
    error_message: str
    def __init__(self, trainer_uid: _Optional[str] = ..., generation: _Optional[int] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., error_type: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class UserErrorVerdict(_message.Message):
    __slots__ = ("print_traceback", "job_failed", "message")
    PRINT_TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    JOB_FAILED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    print_traceback: bool
    job_failed: bool
    message: str
    def __init__(self, print_traceback: _Optional[bool] = ..., job_failed: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class FinishedReport(_message.Message):
    __slots__ = ("trainer_uid", "generation", "rank", "step")
    TRAINER_UID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    trainer_uid: str
    generation: int
    rank: int
    step: int
    def __init__(self, trainer_uid: _Optional[str] = ..., generation: _Optional[int] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class AggregatorHello(_message.Message):
    __slots__ = ("worker_id", "rank", "world_size", "generation", "total_steps", "model_numel", "known_version", "known_incarnation")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NUMEL_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    KNOWN_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    rank: int
    world_size: int
    generation: int
    total_steps: int
    model_numel: int
    known_version: int
    known_incarnation: str
    def __init__(self, worker_id: _Optional[str] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., generation: _Optional[int] = ..., total_steps: _Optional[int] = ..., model_numel: _Optional[int] = ..., known_version: _Optional[int] = ..., known_incarnation: _Optional[str] = ...) -> None: ...

class AggregatorWelcome(_message.Message):
    __slots__ = ("status", "message", "incarnation", "version", "done", "synchronous", "strategy", "resume_step", "resume_json", "resume_world_size", "budget", "steps_accepted")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SYNCHRONOUS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    RESUME_STEP_FIELD_NUMBER: _ClassVar[int]
    RESUME_JSON_FIELD_NUMBER: _ClassVar[int]
    RESUME_WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    STEPS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    status: WelcomeStatus
    message: str
    incarnation: str
    version: int
    done: bool
    synchronous: bool
    strategy: str
    resume_step: int
    resume_json: str
    resume_world_size: int
    budget: int
    steps_accepted: int
    def __init__(self, status: _Optional[_Union[WelcomeStatus, str]] = ..., message: _Optional[str] = ..., incarnation: _Optional[str] = ..., version: _Optional[int] = ..., done: _Optional[bool] = ..., synchronous: _Optional[bool] = ..., strategy: _Optional[str] = ..., resume_step: _Optional[int] = ..., resume_json: _Optional[str] = ..., resume_world_size: _Optional[int] = ..., budget: _Optional[int] = ..., steps_accepted: _Optional[int] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("incarnation", "worker_id", "rank", "generation", "base_version", "num_samples", "local_steps", "step", "resume_json", "world_size", "init", "compute_time_s", "offset", "total_len", "crc32", "data")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RESUME_JSON_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LEN_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    incarnation: str
    worker_id: str
    rank: int
    generation: int
    base_version: int
    num_samples: int
    local_steps: int
    step: int
    resume_json: str
    world_size: int
    init: bool
    compute_time_s: float
    offset: int
    total_len: int
    crc32: int
    data: bytes
    def __init__(self, incarnation: _Optional[str] = ..., worker_id: _Optional[str] = ..., rank: _Optional[int] = ..., generation: _Optional[int] = ..., base_version: _Optional[int] = ..., num_samples: _Optional[int] = ..., local_steps: _Optional[int] = ..., step: _Optional[int] = ..., resume_json: _Optional[str] = ..., world_size: _Optional[int] = ..., init: _Optional[bool] = ..., compute_time_s: _Optional[float] = ..., offset: _Optional[int] = ..., total_len: _Optional[int] = ..., crc32: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("status", "message", "incarnation", "version", "staleness", "hold", "done")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    status: PushStatus
    message: str
    incarnation: str
    version: int
    staleness: int
    hold: bool
    done: bool
    def __init__(self, status: _Optional[_Union[PushStatus, str]] = ..., message: _Optional[str] = ..., incarnation: _Optional[str] = ..., version: _Optional[int] = ..., staleness: _Optional[int] = ..., hold: _Optional[bool] = ..., done: _Optional[bool] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("worker_id", "have_version", "min_version", "wait_s", "incarnation")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    have_version: int
    min_version: int
    wait_s: float
    incarnation: str
    def __init__(self, worker_id: _Optional[str] = ..., have_version: _Optional[int] = ..., min_version: _Optional[int] = ..., wait_s: _Optional[float] = ..., incarnation: _Optional[str] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("status", "incarnation", "version", "done", "offset", "total_len", "crc32", "data")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LEN_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    incarnation: str
    version: int
    done: bool
    offset: int
    total_len: int
    crc32: int
    data: bytes
    def __init__(self, status: _Optional[_Union[ModelStatus, str]] = ..., incarnation: _Optional[str] = ..., version: _Optional[int] = ..., done: _Optional[bool] = ..., offset: _Optional[int] = ..., total_len: _Optional[int] = ..., crc32: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AggregatorStatusRequest(_message.Message):
    __slots__ = ("include_records",)
    INCLUDE_RECORDS_FIELD_NUMBER: _ClassVar[int]
    include_records: bool
    def __init__(self, include_records: _Optional[bool] = ...) -> None: ...

class AggregatorStatusResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...
