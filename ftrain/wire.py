"""The wire's status enums and the lower-case names ftrain's logic, events and JSON status use.

`to_wire(pb.JobState, "running")` is `pb.JOB_STATE_RUNNING`; `from_wire(pb.JobState,
pb.JOB_STATE_RUNNING)` is "running". Each enum's values are its name in upper snake case plus the value's name.
"""
from __future__ import annotations

import functools
import re
from typing import Any


@functools.cache
def _prefix(enum: Any) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"


def to_wire(enum: Any, value_name: str) -> Any:
    """The enum value named `value_name` (ValueError for a name the enum lacks); typed as the
    enum's own value type, which the generated stubs expect."""
    return enum.Value(_prefix(enum) + value_name.upper().replace("-", "_"))


def from_wire(enum: Any, value: int) -> str:
    """The lower-case name of `value` ("unspecified" for a field a peer left unset)."""
    return str(enum.Name(value))[len(_prefix(enum)):].lower()
