#!/usr/bin/env bash
# Regenerates ftrain/proto/*_pb2*.py from protos/ftrain/v1/*.proto (generated code is never hand-edited).
set -euo pipefail
cd "$(dirname "$0")/.."
out=ftrain/proto
python -m grpc_tools.protoc -Iprotos --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  protos/ftrain/v1/coordinator.proto protos/ftrain/v1/agent.proto
# grpc_tools emits package-relative imports as `from ftrain.v1 import ...`; make them point at ftrain.proto.ftrain.v1
find "$out" -name '*.py' -exec sed -i 's/^from ftrain\.v1 import/from ftrain.proto.ftrain.v1 import/' {} +
touch "$out/__init__.py" "$out/ftrain/__init__.py" "$out/ftrain/v1/__init__.py"
