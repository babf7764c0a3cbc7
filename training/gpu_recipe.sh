#!/usr/bin/env bash
# One lent accelerator's session, start to finish, inside a fixed number of seconds:
#   1. vgg_wide teachers (TEACHERS, default 1) trained side by side on one GPU (Keras on JAX, --time-budget),
#      on views augmented up front (--augment-ahead): Keras's augmentation layers inside the compiled JAX train
#      step made vgg_wide's steps >10x slower on an H100 (docs/gpu.md),
#   2. their flip-averaged ensemble written as a Keras-only teacher directory (no TensorFlow there), joined with
#      BASE_TEACHER (an exported model directory's Keras files, e.g. the bundled ensemble) when it is set; the
#      teacher is whichever of BASE_TEACHER alone and the joined one scores higher on PublicTest,
#   3. the teacher labels K augmented views of every Training face once (consistent teaching),
#   4. students distilled side by side from those views (the views and the teacher's labels made once, loaded by
#      each), within the rest.
# Into OUT_DIR (what comes back from a lent machine: at most 8 files of 16 MiB): teacher.tgz (the teachers' runs
# without checkpoints, the teacher's card), teacher.tar.partNN (the joined teacher's directory: 2 parts for one
# vgg_wide with the bundled ensemble), s_NAME.tgz per student (its best PublicTest checkpoint, config, curves,
# timing), each written as soon as it exists. TEACHERS=1 and 3 STUDENTS stay within 8 files beside a log.
# Back home the students are exported (int8 TFLite) where TensorFlow is.
#
#   bash training/gpu_recipe.sh DATA.npz.xz OUT_DIR [SECONDS]      (see docs/gpu.md)
#
# DATA is a `ferlive pack-data` copy (Training + PublicTest: PrivateTest never reaches the GPU).
# Environment overrides (and for a dry run on a CPU): TEACHERS, TEACHER_FERPLUS, PER_CLASS, VIEWS, TEACHER_SHARE,
# RUNS, STUDENTS (name:model:teacher-weight:ferplus-weight[:model directory to start from[:optimizer[:learning
# rate[:mixup alpha]]]] ...; an empty field keeps the default), BASE_TEACHER. A student with a mixup alpha trains on
# function-matching views (--teacher-mixup: each view blended with a partner face, the blend labelled by the
# teacher), so it labels its own views inside its budget instead of loading the shared ones.
set -u
DATA=${1:?usage: gpu_recipe.sh DATA.npz.xz OUT_DIR [SECONDS]}
OUT=${2:?usage: gpu_recipe.sh DATA.npz.xz OUT_DIR [SECONDS]}
TOTAL=${3:-540}
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
export FERLIVE_CACHE=${FERLIVE_CACHE:-/tmp/ferlive-cache}
export FERLIVE_VIEWS_CACHE=${FERLIVE_VIEWS_CACHE:-/tmp/ferlive-views}  # the labelling's views, loaded by every student
export JAX_DEFAULT_MATMUL_PRECISION=${JAX_DEFAULT_MATMUL_PRECISION:-tensorfloat32}  # TF32 tensor cores for float32 convs
PY=${PYTHON:-python3}
R=${RUNS:-runs/gpu}
K=${VIEWS:-16}
LIMIT=${PER_CLASS:+--per-class $PER_CLASS}
START=$SECONDS
mkdir -p "$R" "$OUT"
"$PY" -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" 2>&1 | tail -n 1
left() { echo $(( TOTAL - (SECONDS - START) )); }
say() { echo "[$(( SECONDS - START ))s] $*"; }

# 1. teachers: a share of the time (TEACHER_SHARE, default 42%); --time-budget counts from each process's start
TB=$(( TOTAL * ${TEACHER_SHARE:-42} / 100 - 10 ))
[ "$TB" -ge 30 ] || { say "SECONDS=$TOTAL leaves the teachers $TB s; give the recipe more time"; exit 2; }
T=$(seq 1 "${TEACHERS:-1}")
TCMD=(train)  # TEACHER_FERPLUS=W: the teachers learn the FER+ crowd's votes too (share W of the target)
[ -n "${TEACHER_FERPLUS:-}" ] && TCMD=(distill --teacher-weight 0 --ferplus-weight "$TEACHER_FERPLUS")
say "teachers: $(echo $T | wc -w) x vgg_wide, --time-budget $TB s"
for s in $T; do
  "$PY" -m training "${TCMD[@]}" --model vgg_wide --data "$DATA" --run-dir "$R/t$s" --seed "$s" --epochs 150 \
    --batch-size 128 --lr 1e-3 --erasing 0.25 --augment-ahead 16 --time-budget "$TB" $LIMIT > "$R/t$s.log" 2>&1 &
done
wait
for s in $T; do
  say "t$s: $(wc -l < "$R/t$s/history.csv" 2>/dev/null) rows; last: $(tail -n 1 "$R/t$s/history.csv" 2>/dev/null)"
  grep -E "ms/step|time budget|Error" "$R/t$s.log" | tail -n 3
done

# 2. the Keras-only teacher: the members, each also on the mirrored face (BASE_TEACHER's mirror is inside it)
"$PY" -m training export --keras-only --flip-tta --run-dir ${BASE_TEACHER:-} $(for s in $T; do echo "$R/t$s"; done) \
  --out "$R/teacher" --data "$DATA" > "$R/teacher.log" 2>&1 || { say "teacher export failed"; tail -n 30 "$R/teacher.log"; }
TEACHER="$R/teacher"
if [ -n "${BASE_TEACHER:-}" ]; then  # keep the new members only if they lift the base on PublicTest
  TEACHER=$("$PY" -c "import json, sys; m = json.load(open(sys.argv[1]))['metrics']['PublicTest']
print(sys.argv[2] if m['keras']['accuracy'] > m['members_alone'][0] else sys.argv[3])" "$R/teacher/card.json" \
    "$R/teacher" "$BASE_TEACHER" 2>/dev/null || echo "$BASE_TEACHER")
fi
say "teacher $TEACHER; PublicTest of the joined one and its members: $("$PY" -c "import json, sys
m = json.load(open(sys.argv[1]))['metrics']['PublicTest']; print(m['keras'], m.get('members_alone'))" \
  "$R/teacher/card.json" 2>&1 | tail -n 1)"

# the teachers' records, and the joined teacher's directory in parts of at most 15 MiB (a file that comes back is at
# most 16 MiB; its weights file holds no optimiser state, unlike the runs' checkpoints): back home
# `cat teacher.tar.part* | tar -x` gives a Keras-only teacher directory (`ferlive distill --teacher` runs it there)
tar -czf "$OUT/teacher.tgz" -C "$R" --exclude '*.h5' --exclude backup --exclude last.keras \
  $(for s in $T; do echo "t$s t$s.log"; done) teacher/card.json teacher.log
tar -cf - -C "$R" teacher | split -b 15M -d - "$OUT/teacher.tar.part"

# 3. one labelling of the views (a zero-epoch distill run), then its cache goes to every student
COMMON=(--teacher "$TEACHER" --temperature 1 --erasing 0.25 --teacher-views "$K" --batch-size 128 --data "$DATA")
"$PY" -m training distill --model vgg_small_mid96 --teacher-weight 0.7 --ferplus-weight 0.2 "${COMMON[@]}" \
  --epochs 0 --run-dir "$R/views" $LIMIT > "$R/views.log" 2>&1 || { say "labelling failed"; tail -n 30 "$R/views.log"; }
say "views labelled: $(cat "$R/views/targets.json" 2>/dev/null | tr -d '\n ')"

# 4. students side by side, in what is left (minus ~30 s for packing; their budgets count from their start)
STUDENTS=${STUDENTS:-"mid96:vgg_small_mid96:0.7:0.2 s2d:vgg_small_s2d:0.7:0.2 mid96_t9:vgg_small_mid96:0.9:0.1"}
SB=$(( $(left) - 30 ))
if [ "$SB" -lt 30 ]; then say "no time left for the students ($SB s)"; STUDENTS=""; fi
say "students, --time-budget $SB s"
for spec in $STUDENTS; do
  IFS=: read -r name model tw fw init opt lr mix <<< "$spec"
  mkdir -p "$R/s_$name"
  [ -z "$mix" ] && cp "$R/views/teacher_views.npz" "$R/s_$name/" 2>/dev/null
  (  # each student is packed the moment it ends (checkpoint, config, curves, timing), so a late one loses only itself
    "$PY" -m training distill --model "$model" --teacher-weight "$tw" --ferplus-weight "$fw" "${COMMON[@]}" \
      --epochs 150 --time-budget "$SB" --run-dir "$R/s_$name" ${init:+--init-from "$init"} \
      ${opt:+--optimizer "$opt"} ${lr:+--lr "$lr"} ${mix:+--teacher-mixup "$mix"} $LIMIT \
      > "$R/s_$name.log" 2>&1
    tar -czf "$OUT/s_$name.tgz" -C "$R" --exclude teacher_views.npz --exclude backup --exclude last.keras \
      "s_$name" "s_$name.log"
    say "s_$name: best $(sort -t, -k4 -g "$R/s_$name/history.csv" 2>/dev/null | tail -n 1)"
  ) &
done
wait
say "done"
