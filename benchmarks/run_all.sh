#!/usr/bin/env bash
# Every benchmark, one after another on a quiet machine; JSON results land in benchmarks/results/.
#   bash benchmarks/run_all.sh [model_dir]      (default: the bundled model)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${1:-shared/bundled_model}
OUT=benchmarks/results
mkdir -p "$OUT"
export PATH="$(dirname "$PY"):$PATH"
run() { echo "== $*"; "$@"; }
run "$PY" benchmarks/inference.py --models seed_cnn,vgg_lite,xception_wide,mini_xception --batches 1,16 --repeats 30 --out "$OUT/inference.json"
# the students and candidates with this CPU's kernels and with an AVX2-only CPU's (AVX-512/VNNI masked)
for isa in native avx2; do
  run "$PY" benchmarks/inference.py --isa $isa --models vgg_small,vgg_medium,vgg_lite,xception_wide,mini_xception,vgg_small_deep,vgg_small_late,vgg_small_deep96,vgg_small_mid96,vgg_small_flat96,vgg_small_s2d \
      --batches 1 --repeats 200 --model-dir models/vgg_small_distilled --model-dir models/vgg_medium_distilled --model-dir models/vgg_small_mid96_distilled \
      --out "$OUT/inference_isa_$isa.json"
done
run "$PY" benchmarks/stages.py --isa avx2 --models vgg_small_mid96,vgg_small_s2d --out "$OUT/stages_avx2.json"
run "$PY" benchmarks/augment_backends.py --backends jax tensorflow --out "$OUT/augment_backends.json"
run "$PY" benchmarks/train_throughput.py --models seed_cnn,vgg_lite,xception_wide,mini_xception --steps 20 --repeats 3 --out "$OUT/train_throughput.json"
run "$PY" benchmarks/pipeline.py --seconds 8 --workers 1 2 --model-dir "$MODEL" --json "$OUT/pipeline.json"
run "$PY" benchmarks/detector.py --model-dir "$MODEL" --faces 3589 --out "$OUT/detector.json"
run "$PY" benchmarks/redetect.py --out "$OUT/redetect.json"
run "$PY" benchmarks/web_roundtrip.py --clients 1 8 --seconds 20 --warmup 3 --model-dir "$MODEL" --json "$OUT/web_roundtrip.json"
