#!/usr/bin/env bash
# The GPU check of issue 21, one command of under 8 minutes on one H200-class GPU that installs nothing
# from the internet. Run benchmarks/device_wheels.sh first where PyPI is reachable, then, on the GPU
# machine, from the repository root with .whl/ beside it:
#     bash benchmarks/device_check.sh 2>&1 | tee device_check.log
# Each part prints its own figures beside its peer's, measured in the same run:
#   1. training throughput of embedlab's fit against a plain PyTorch AMP loop of the same model;
#   2. embedding on the GPU against the CPU (throughput, agreement of the vectors);
#   3. exact evaluation of 1,000,000 x 1,000,000 128-d embeddings, checked against the CPU engine on a
#      slice, and search throughput at 1,000,000 items against faiss used directly.
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 - <<'PY'
import platform, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"machine: {platform.node()}, {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
status=0
part() {
    echo "== $1"
    shift
    timeout "$@" || { echo "(part failed or timed out: rc $?)"; status=1; }
}
part "1. training throughput" 200 python3 benchmarks/gpu_training.py
part "2. embedding" 90 python3 benchmarks/gpu_embedding.py
part "3. evaluation and search" 230 python3 benchmarks/gpu_evaluation.py
exit $status
