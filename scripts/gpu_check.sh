#!/usr/bin/env bash
# The CUDA paths of transfer in one command, on a machine with a GPU and transfer installed:
#   bash scripts/gpu_check.sh                    # TRANSFER="python -m transfer_cli.cli" for a source checkout
# 1. the demo with hardware=auto, alone (the device and precision it picks, its time);
# 2. at once: DANN in fp16 with a grad scaler (two optimisers, one scaler), then `transfer predict` on its model;
#    kill -9 and resume of a deterministic run, compared with an uninterrupted one; real kitchen -> dvd jobs of
#    experiment=amazon12 (source_only and dann, SEEDS) side by side on the one GPU.
# Needs TRANSFER_DATA_DIR (the Blitzer data) for step 2's real jobs. SEEDS="" skips them; JOB_LIMIT caps each (s).
set -u
TR=${TRANSFER:-transfer}
W=${WORK_DIR:-$(mktemp -d)}; mkdir -p "$W"
T0=$(date +%s)
stamp() { echo "== $(( $(date +%s) - T0 ))s $*"; }
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TRANSFER_CACHE_DIR=${TRANSFER_CACHE_DIR:-$W/cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stamp "demo, hardware=auto, alone"
$TR run experiment=demo hydra.run.dir=$W/demo > $W/demo.log 2>&1; echo "demo rc $?"

TINY="source=demo_gadgets target=demo_films model=tiny data.max_length=48 data.max_source_train=120
      data.max_source_val=60 data.max_target_pool=64 data.max_target_test=100 train.batch_size=4 train.lr=1e-3
      train.epochs=3 train.patience=5 strategy=dann hardware=cuda hardware.deterministic=true"
stamp "at once: fp16 DANN and predict, kill -9 and resume, real jobs"
( $TR run experiment=demo strategy=dann hardware=cuda hardware.precision=fp16 train.save_model=true \
      hydra.run.dir=$W/fp16 > $W/fp16.log 2>&1; echo "fp16 dann rc $?"
  printf 'text\ngreat gadget, works well\nterrible film, a waste of time\n' > $W/in.csv
  $TR predict $W/fp16 --input $W/in.csv --output $W/pred.csv > $W/predict.log 2>&1; echo "predict rc $?"
  tail -1 $W/predict.log ) &
( $TR run $TINY hydra.run.dir=$W/plain > $W/plain.log 2>&1; echo "uninterrupted rc $?" ) &
( $TR run $TINY hydra.run.dir=$W/killed > $W/killed1.log 2>&1 & pid=$!
  until [ "$(cat $W/killed/history.csv 2>/dev/null | wc -l)" -ge 2 ] || ! kill -0 $pid 2>/dev/null; do
    sleep 0.05; done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; echo "killed after $(( $(wc -l < $W/killed/history.csv) - 1 )) epoch(s)"
  $TR run $TINY hydra.run.dir=$W/killed > $W/killed2.log 2>&1; echo "resumed rc $?" ) &
for seed in ${SEEDS-0 1 2}; do for strategy in source_only dann; do
  ( timeout ${JOB_LIMIT:-900} $TR run experiment=amazon12 source=kitchen target=dvd strategy=$strategy seed=$seed \
      hydra.run.dir=$W/full/$strategy-$seed > $W/full-$strategy-$seed.log 2>&1
    echo "kitchen->dvd $strategy seed $seed rc $?" ) &
done; done
wait
stamp "summary"
python3 - "$W" <<'EOF'
import json, pathlib, statistics, sys
work = pathlib.Path(sys.argv[1])
def metrics(folder):
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None
timing = ("seconds", "per_second", "output_dir")
plain, killed = metrics(work / "plain"), metrics(work / "killed")
if plain and killed:
    diff = {k: (v, killed.get(k)) for k, v in plain.items() if not any(t in k for t in timing) and v != killed.get(k)}
    print("resume: the same metrics as the uninterrupted run" if not diff else f"resume: differs in {diff}")
rows = []
for folder in [work / "demo", work / "fp16", *sorted((work / "full").glob("*"))]:
    m = metrics(folder)
    if m:
        rows.append(m)
        print(f"{folder.name:16} {m['device']:6} {m['precision']:5} target acc {m['target_test_accuracy']:.3f}  "
              f"train {m['train_seconds']:7.1f} s  total {m['total_seconds']:7.1f} s")
for strategy in ["source_only", "dann"]:
    acc = [m["target_test_accuracy"] for m in rows if m["experiment"] == "amazon12" and m["strategy"] == strategy]
    if len(acc) > 1:
        print(f"kitchen->dvd {strategy}: {statistics.mean(acc):.3f} ± {statistics.stdev(acc):.3f} over {len(acc)} seeds")
EOF
grep -l "Traceback" $W/*.log 2>/dev/null | sed 's/^/traceback in /'
stamp "done; run folders and logs in $W"
