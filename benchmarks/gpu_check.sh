#!/usr/bin/env bash
# One command for a GPU machine (README set-up only, nothing else installed), under 8 minutes:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. the GPU tests (pytest -m gpu: the CUDA detector against the CPU one, batched detection);
# 2. the throughput benchmark on the GPU: faces15 crops with --detect never and faces15 photos with
#    detection (targets on one H100: >= 3,000 and >= 1,000 images/s), then the photos mode
#    (~800-px photos, target >= 300 images/s);
# 3. everything into OUT_DIR/gpu_check.json (default benchmarks/).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks}"
PY="${PYTHON:-python}"
export FKPBATCH_DATA="${FKPBATCH_DATA:-../shared/data}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu_name.txt" || true
timeout 120 "$PY" -m pytest -m gpu tests -q -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1 && tests=passed || tests=failed
timeout 200 "$PY" benchmarks/throughput.py --images 20000 --data "$FKPBATCH_DATA" \
    --json "$OUT/gpu_throughput.json" > "$OUT/gpu_throughput.log" 2>&1 || echo "faces15 benchmark failed" >&2
timeout 150 "$PY" benchmarks/throughput.py --photos --repeats 8 --data "$FKPBATCH_DATA" \
    --json "$OUT/gpu_throughput_photos.json" > "$OUT/gpu_photos.log" 2>&1 || echo "photos benchmark failed" >&2
"$PY" - "$OUT" "$tests" <<'PY'
import json, sys
from pathlib import Path
out, tests = Path(sys.argv[1]), sys.argv[2]
def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None
faces, photos = load("gpu_throughput.json"), load("gpu_throughput_photos.json")
summary = {"gpu": (out / "gpu_name.txt").read_text().strip() if (out / "gpu_name.txt").exists() else None,
           "gpu_tests": tests, "faces15": faces, "photos": photos}
if faces:
    summary["detect_never_images_per_s"] = faces["end_to_end_detect_never"]["images_per_s"]
    summary["detect_auto_images_per_s"] = faces.get("end_to_end_detect_auto", {}).get("images_per_s")
if photos:
    summary["photos_800_images_per_s"] = photos["photos_800"]["predict"]["images_per_s"]
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: v for k, v in summary.items() if k not in ("faces15", "photos")}, indent=2))
PY
