#!/usr/bin/env bash
# The GPU check of issue 21: one command of under 8 minutes on one H200-class GPU (each part has its own
# time limit, 470 s together) that installs nothing from the internet. Run benchmarks/device_wheels.sh
# first where PyPI is reachable, then, on the GPU machine, from the repository root with .whl/ beside it:
#     bash benchmarks/device_check.sh 2>&1 | tee device_check.log
# (`bash benchmarks/device_check.sh --smoke` runs every part tiny on a CPU.)
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
# --smoke: the same parts, tiny and on the CPU, to check the script itself on a machine without a GPU.
if [[ "${1:-}" == "--smoke" ]]; then
    training=(--device cpu --backbone resnet18 --image-size 32 --batch-size 16 --steps 2)
    embedding=(--device cpu --backbone resnet18 --image-size 32 --images 64 --cpu-images 32 --batch-size 16)
    evaluation=(--device cpu --n 20000 --classes 200)
else
    training=() embedding=() evaluation=()
fi
part "1. training throughput" 140 python3 benchmarks/gpu_training.py "${training[@]}"
part "2. embedding" 60 python3 benchmarks/gpu_embedding.py "${embedding[@]}"
part "3. evaluation and search" 270 python3 benchmarks/gpu_evaluation.py "${evaluation[@]}"
exit $status
