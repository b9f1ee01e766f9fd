#!/usr/bin/env bash
# Run `mltrain bench` on a CUDA machine and print the table (no downloads; < 10 minutes on one GPU).
#
#   benchmarks/gpu.sh                 # 1,100 synthetic 512x384 JPEGs, 1+1 epochs, batch 32, 224 px
#   PER_CLASS=200 EPOCHS=2+2 benchmarks/gpu.sh
#
# Needs a Python with torch (CUDA build), torchvision, pydantic, pyyaml, typer, tqdm, pillow, numpy
# (mlflow is not needed: the bench logs nothing). mltrain itself runs from this checkout's src/.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
PER_CLASS=${PER_CLASS:-100}
EPOCHS=${EPOCHS:-1+1}
WORK=${WORK:-$(mktemp -d /tmp/mltrain-gpu-bench.XXXXXX)}
OUT=${OUT:-$WORK}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export MLTRAIN_CACHE_DIR="$WORK/cache"

"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh: torch sees no CUDA device (torch %s)" % torch.__version__)
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$PYTHON" -m mltrain data synth --dest "$WORK/data" --per-class "$PER_CLASS" --image-size 512x384 --seed 0 >/dev/null
"$PYTHON" -m mltrain bench --data "$WORK/data" --epochs "$EPOCHS" --set accelerator=cuda \
    --json "$OUT/bench-gpu.json" --no-progress "$@"
echo "results: $OUT/bench-gpu.json"
