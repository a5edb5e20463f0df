#!/usr/bin/env bash
# Issue 7's GPU checks as one device call. A task that is lent a GPU gets 15 minutes of device time, the
# machine's start included, so the checks travel prepared:
#   here:   make gpu-kit      # .gpu/: wheels the device image lacks (for its Python 3.12) + the trained fixture
#   device: run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=600)
# Steps (default: all three, in this order), each under its own time limit so that a slow one cannot take
# the others' results with it; logs and JSON go to $OUT (the device tool returns that folder):
#   check    tests/test_bench.py on the GPU: torch-cuda vs ONNX Runtime on trained and random-init weights at
#            batch 4/16/64 (CUDA graphs + conv tactics, compiled, timed recipes), uint8 pixels, the Predictor
#   bench    cvzoo bench dla34 -e torch-cuda -b 1,8,256 --vs-torch: host uint8 input end to end, both ratios
#   profile  benchmarks/gpu_profile.py: where batch 256 spends its time (dla34, ese_vovnet19b_dw: the misses)
# Where no GPU exists, `check` skips its CUDA tests and `bench` stops with its one-line error; the script
# still shows that the kit installs and the code imports (how it is tested without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=$(realpath -m "${GPU_KIT:-.gpu}")
OUT=${OUT:-/tmp/cvzoo-gpu-session}  # the device tool sets OUT
SITE=${GPU_SITE:-/tmp/cvzoo-site}
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(check bench profile)
for s in "${STEPS[@]}"; do
    case $s in check|bench|profile) ;; *) echo "gpu_session: unknown step '$s' (steps: check bench profile)"; exit 2 ;; esac
done
mkdir -p "$OUT"

if ! ls "$KIT"/wheels/*.whl >/dev/null 2>&1; then
    echo "gpu_session: no wheels in $KIT/wheels (run 'make gpu-kit' on the developer machine and carry $KIT)"
    exit 2
fi
# --target keeps the image's own packages (torch, timm, onnx, onnxruntime) as they are: only what it lacks
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$KIT"/wheels/*.whl || { echo "gpu_session: installing $KIT/wheels failed"; exit 2; }
# the fixture is found as a card's default weights are (cvzoo.checkpoint.weights_search_path)
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 CVZOO_CACHE=/tmp/cvzoo-cache CVZOO_WEIGHTS_PATH="$KIT/fixtures"

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    nproc
    python3 - <<'EOF'
import importlib.metadata as m, platform
print("python", platform.python_version())
for p in ("torch", "timm", "onnx", "onnxruntime", "numpy", "pydantic", "onnxslim"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "missing")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
} 2>&1 | tee "$OUT/env.txt"

status=0
step() {  # step NAME SECONDS COMMAND...: run it under `timeout`, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (time limit)')"
    [ "$rc" = 0 ] || status=1
}

for s in "${STEPS[@]}"; do
    case $s in
        check) step check 220 python3 -m pytest -q -ra -p no:cacheprovider tests/test_bench.py \
                   -k "torch_cuda or pixel_input" ;;
        bench) step bench 170 python3 -m cvzoo bench dla34 -e torch-cuda -b 1,8,256 --vs-torch --time 2 \
                   --json "$OUT/bench_dla34.json" ;;
        profile) step profile 150 python3 benchmarks/gpu_profile.py --models dla34,ese_vovnet19b_dw --batch 256 \
                     --out "$OUT/gpu_profile.json" ;;
    esac
done
exit $status
