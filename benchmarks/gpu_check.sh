#!/usr/bin/env bash
# One command for a GPU machine (README set-up only, nothing else installed), under 8 minutes:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. the GPU tests (pytest -m gpu: predict --device cuda end to end, detection on the GPU against
#    the CPU rows, the CUDA detector against the CPU one);
# 2. the throughput benchmark on the GPU (benchmarks/throughput.py --device cuda): faces15 images as
#    crops with --detect never, then as photos with detection (in the CPU workers: --detect-on auto),
#    and with --detect-on device (the detector on the GPU) for comparison (targets on one H100: >= 3,000 and >= 1,000 images/s);
#    then ~800-px photos (target >= 300 images/s), likewise;
# 3. everything into OUT_DIR/gpu_check.json (default benchmarks/results/<fkpbatch version>/gpu_check/),
#    with a pass/fail per target.
# On a lent GPU machine (no ../shared there; 64 MiB travel): first, here,
#   python training/pack_data.py ../shared/data/faces15 --out .gpudata --photos ../shared/data/photos
# then carry .gpudata and run FKPBATCH_DATA=.gpudata bash benchmarks/gpu_check.sh "$OUT" (faces15
# is then grayscale crops, the photos at most 800 px: the figures are for those).
# Dry run on a CPU machine (checks that every command exists and parses; the numbers mean nothing):
#   DEVICE=cpu IMAGES=40 REPEATS=4 LIMIT=4 bash benchmarks/gpu_check.sh /tmp/gpu_check
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"  # the README set-up's environment
[ -x "$PY" ] || PY=python3  # a lent GPU machine: its python3 holds PyTorch
OUT="${1:-benchmarks/results/$("$PY" -c 'import fkpbatch; print(fkpbatch.__version__)')/gpu_check}"
DEVICE="${DEVICE:-cuda}"
IMAGES="${IMAGES:-16000}"  # faces15 images (linked) per end-to-end run; a quarter more for the steady rate
REPEATS="${REPEATS:-64}"   # each ~800-px photo linked this many times (56 photos: 3,584 images)
LIMIT="${LIMIT:+--limit $LIMIT}"
export FKPBATCH_DATA="${FKPBATCH_DATA:-../shared/data}"
mkdir -p "$OUT"
started=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu_name.txt" 2>/dev/null \
    || echo "no nvidia-smi" > "$OUT/gpu_name.txt"
# time limits: 100 + 220 + 150 s at most, so the whole check ends within 8 minutes
timeout -k 5 100 "$PY" -m pytest -m gpu tests -q -p no:cacheprovider -rs > "$OUT/gpu_tests.txt" 2>&1 \
    && tests=passed || tests="failed (exit $?)"
timeout -k 5 220 "$PY" benchmarks/throughput.py --device "$DEVICE" --images "$IMAGES" --compare-device \
    --data "$FKPBATCH_DATA" --json "$OUT/gpu_throughput.json" > "$OUT/gpu_throughput.log" 2>&1 \
    || echo "faces15 benchmark failed: see $OUT/gpu_throughput.log" >&2
timeout -k 5 150 "$PY" benchmarks/throughput.py --photos --sets photos_800 --device "$DEVICE" --repeats "$REPEATS" \
    --bare-repeats 2 --skip-passes-two --compare-device $LIMIT --data "$FKPBATCH_DATA" \
    --json "$OUT/gpu_throughput_photos.json" > "$OUT/gpu_photos.log" 2>&1 \
    || echo "photos benchmark failed: see $OUT/gpu_photos.log" >&2
"$PY" - "$OUT" "$tests" "$(( $(date +%s) - started ))" <<'PY'
import json, sys
from pathlib import Path

out, tests, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])


def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None


def rate(report, *keys):
    for key in keys:
        report = (report or {}).get(key)
    return report


faces, photos = load("gpu_throughput.json"), load("gpu_throughput_photos.json")
summary = {
    "gpu": (out / "gpu_name.txt").read_text().strip(),
    "gpu_tests": tests,
    "gpu_tests_tail": (out / "gpu_tests.txt").read_text().strip().splitlines()[-3:],
    "seconds": seconds,
}
measured = {
    # name: (the benchmark report's key, the images/s target)
    "faces15_detect_never": ("end_to_end_detect_never", 3000),
    "faces15_detect_auto": ("end_to_end_detect_auto", 1000),
    "faces15_detect_on_device": ("end_to_end_detect_auto_on_device", None),
}
for name, (key, target) in measured.items():
    summary[name] = {
        "images_per_s": rate(faces, key, "images_per_s"),
        "steady_images_per_s": rate(faces, key, "steady_images_per_s"),
        "target": target,
    }
for name, key, target in (("photos_800", "predict", 300), ("photos_800_detect_on_device", "predict_detect_on_device", None)):
    summary[name] = {
        "images_per_s": rate(photos, "photos_800", key, "images_per_s"),
        "steady_images_per_s": rate(photos, "photos_800", key, "steady_images_per_s"),
        "target": target,
    }
for entry in summary.values():
    if isinstance(entry, dict) and entry.get("target"):
        entry["meets_target_wall_clock"] = (entry["images_per_s"] or 0) >= entry["target"]
        entry["meets_target_steady"] = (entry["steady_images_per_s"] or 0) >= entry["target"]
summary["stages"] = {
    key: rate(faces, key) for key in ("decode_crop_only", "model_only", "decode_detect_crop_only", "decode_prepare_only")
}
summary["machine"] = rate(faces, "machine") or rate(photos, "machine")
summary["faces15"], summary["photos"] = faces, photos
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: v for k, v in summary.items() if k not in ("faces15", "photos")}, indent=2))
PY
