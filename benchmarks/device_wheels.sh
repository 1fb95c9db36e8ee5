#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that benchmarks/device_check.sh installs on a GPU machine
# whose Python (3.12) already has torch, torchvision, lightning, timm, numba, typer, rich and PyYAML but
# not pytorch-metric-learning, faiss or pydantic. They land in .whl/ (ignored by git; carry it along).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    pytorch-metric-learning==2.9.0 faiss-cpu==1.15.1 pydantic==2.14.4 pydantic-core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5
du -sh .whl
