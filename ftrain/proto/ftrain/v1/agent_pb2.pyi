from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ShardChunk(_message.Message):
    __slots__ = ("job_id", "blob_id", "index", "step", "offset", "total_len", "crc32", "data", "blob_info")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LEN_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    BLOB_INFO_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    blob_id: str
    index: int
    step: int
    offset: int
    total_len: int
    crc32: int
    data: bytes
    blob_info: bytes
    def __init__(self, job_id: _Optional[str] = ..., blob_id: _Optional[str] = ..., index: _Optional[int] = ..., step: _Optional[int] = ..., offset: _Optional[int] = ..., total_len: _Optional[int] = ..., crc32: _Optional[int] = ..., data: _Optional[bytes] = ..., blob_info: _Optional[bytes] = ...) -> None: ...

class PutShardResponse(_message.Message):
    __slots__ = ("ok", "bytes", "message")
    OK_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    bytes: int
    message: str
    def __init__(self, ok: _Optional[bool] = ..., bytes: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetShardRequest(_message.Message):
    __slots__ = ("job_id", "blob_id", "index")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    blob_id: str
    index: int
    def __init__(self, job_id: _Optional[str] = ..., blob_id: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class CorruptRequest(_message.Message):
    __slots__ = ("job_id", "step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class CorruptResponse(_message.Message):
    __slots__ = ("corrupted",)
    CORRUPTED_FIELD_NUMBER: _ClassVar[int]
    corrupted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, corrupted: _Optional[_Iterable[str]] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("node_id", "job_id", "shard_count", "shard_bytes", "data_address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    job_id: str
    shard_count: int
    shard_bytes: int
    data_address: str
    def __init__(self, node_id: _Optional[str] = ..., job_id: _Optional[str] = ..., shard_count: _Optional[int] = ..., shard_bytes: _Optional[int] = ..., data_address: _Optional[str] = ...) -> None: ...

class DataRequest(_message.Message):
    __slots__ = ("token", "job_id", "op", "blob_id", "index", "step", "total_len", "crc32", "blob_info")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LEN_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    BLOB_INFO_FIELD_NUMBER: _ClassVar[int]
    token: str
    job_id: str
    op: int
    blob_id: str
    index: int
    step: int
    total_len: int
    crc32: int
    blob_info: bytes
    def __init__(self, token: _Optional[str] = ..., job_id: _Optional[str] = ..., op: _Optional[int] = ..., blob_id: _Optional[str] = ..., index: _Optional[int] = ..., step: _Optional[int] = ..., total_len: _Optional[int] = ..., crc32: _Optional[int] = ..., blob_info: _Optional[bytes] = ...) -> None: ...

class DataReply(_message.Message):
    __slots__ = ("code", "message", "total_len", "crc32", "step")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LEN_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    total_len: int
    crc32: int
    step: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., total_len: _Optional[int] = ..., crc32: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class TrainerMetrics(_message.Message):
    __slots__ = ("job_id", "local_rank", "rank", "generation", "world_size", "step", "committed_step", "step_duration_s", "stall_s", "snapshot_duration_s", "snapshot_bytes", "encode_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    STALL_S_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENCODE_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    local_rank: int
    rank: int
    generation: int
    world_size: int
    step: int
    committed_step: int
    step_duration_s: _containers.RepeatedScalarFieldContainer[float]
    stall_s: _containers.RepeatedScalarFieldContainer[float]
    snapshot_duration_s: _containers.RepeatedScalarFieldContainer[float]
    snapshot_bytes: int
    encode_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., local_rank: _Optional[int] = ..., rank: _Optional[int] = ..., generation: _Optional[int] = ..., world_size: _Optional[int] = ..., step: _Optional[int] = ..., committed_step: _Optional[int] = ..., step_duration_s: _Optional[_Iterable[float]] = ..., stall_s: _Optional[_Iterable[float]] = ..., snapshot_duration_s: _Optional[_Iterable[float]] = ..., snapshot_bytes: _Optional[int] = ..., encode_bytes: _Optional[int] = ...) -> None: ...

class TrainerMetricsAck(_message.Message):
    __slots__ = ("ok",)
    OK_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    def __init__(self, ok: _Optional[bool] = ...) -> None: ...
