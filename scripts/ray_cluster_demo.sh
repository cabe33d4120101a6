#!/usr/bin/env bash
# A two-node Ray cluster on this machine (a head and one worker node, started with `ray start`,
# separate temp dirs, loopback only), then: the node list; `register-batch` over JOBS jobs; the
# evaluation of CATEGORIES; a second batch during which the worker node is killed (SIGKILL of
# every process of that node). Writes everything into OUT and stops the cluster at the end.
#
#   bash scripts/ray_cluster_demo.sh OUT ARTIFACTS [JOBS] [CATEGORIES]
#
# ARTIFACTS holds dataset/ and <category>/{shapespace.npz,unet.pt} (e.g. /work/artifacts/full).
# Quick settings (said in the output): register.iterations = 10, evaluate noise_draws = 1.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:?OUT}")
ART=$(realpath "${2:?ARTIFACTS}")
JOBS=${3:-40}
CATEGORIES=${4:-all}
PORT=${PORT:-6390}
ADDR=127.0.0.1:$PORT
V=$PWD/.venv/bin
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token
HEAD_TMP=$OUT/ray_head
WORKER_TMP=$OUT/ray_worker
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/demo.log"; }

cleanup() { "$V/ray" stop --force >/dev/null 2>&1 || true; }
trap cleanup EXIT

log "starting the head (2 CPUs, temp dir $HEAD_TMP) and a worker node (2 CPUs, $WORKER_TMP)"
"$V/ray" start --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus=2 \
    --temp-dir="$HEAD_TMP" --include-dashboard=false --disable-usage-stats >"$OUT/head.log" 2>&1
"$V/ray" start --address="$ADDR" --node-ip-address=127.0.0.1 --num-cpus=2 \
    --temp-dir="$WORKER_TMP" --disable-usage-stats >"$OUT/worker.log" 2>&1
sleep 5
"$V/python" - "$ADDR" >"$OUT/nodes.txt" <<'EOF'
import sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
for n in ray.nodes():
    print(f"{n['NodeID']}  alive={n['Alive']}  address={n['NodeManagerAddress']}:"
          f"{n['NodeManagerPort']}  cpus={n['Resources'].get('CPU')}  "
          f"head={'node:__internal_head__' in n['Resources']}  "
          f"session={n.get('ObjectStoreSocketName', '').split('/sockets')[0]}")
EOF
log "nodes:"; cat "$OUT/nodes.txt" | tee -a "$OUT/demo.log"

log "making $JOBS jobs (bottle test views, 160x120)"
"$V/python" -c "
from regtool.batch.demo import write_demo_jobs
write_demo_jobs('$ART/dataset', 'bottle', '$OUT/jobs', $JOBS, seed=7)"
printf '[register]\niterations = 10\n\n[evaluate]\nnoise_draws = 1\n' >"$OUT/quick.toml"

log "register-batch over $JOBS jobs on the cluster (2 workers)"
t0=$(date +%s)
"$V/regtool" register-batch --jobs "$OUT/jobs/jobs.jsonl" --out "$OUT/batch" \
    --shapespace "$ART/bottle/shapespace.npz" --unet "$ART/bottle/unet.pt" \
    --config "$OUT/quick.toml" --executor ray --ray-address "$ADDR" --workers 2 \
    2>&1 | tail -n 3 | tee -a "$OUT/demo.log"
log "register-batch: $(( $(date +%s) - t0 )) s; jobs per node:"
cut -d, -f6 "$OUT/batch/summary.csv" | tail -n +2 | sort | uniq -c | tee -a "$OUT/demo.log"

log "evaluate --category $CATEGORIES on the cluster (2 workers)"
t0=$(date +%s)
"$V/regtool" --seed 0 evaluate --dataset "$ART/dataset" --category "$CATEGORIES" \
    --shapespace "$ART/{category}/shapespace.npz" --unet "$ART/{category}/unet.pt" \
    --out "$OUT/evaluation" --config "$OUT/quick.toml" --executor ray --ray-address "$ADDR" \
    --workers 2 >"$OUT/evaluate.log" 2>&1
log "evaluate: $(( $(date +%s) - t0 )) s; report $OUT/evaluation/report.md"

KILL_JOBS=${KILL_JOBS:-12}
log "register-batch over the first $KILL_JOBS jobs again (new folder); the worker node is killed"
head -n "$KILL_JOBS" "$OUT/jobs/jobs.jsonl" >"$OUT/jobs/kill.jsonl"
"$V/regtool" register-batch --jobs "$OUT/jobs/kill.jsonl" --out "$OUT/batch_kill" \
    --shapespace "$ART/bottle/shapespace.npz" --unet "$ART/bottle/unet.pt" \
    --config "$OUT/quick.toml" --executor ray --ray-address "$ADDR" --workers 2 \
    >"$OUT/batch_kill.log" 2>&1 &
batch=$!
until [ -f "$OUT/batch_kill/summary.csv" ] && \
      [ "$(grep -c ',ok,' "$OUT/batch_kill/summary.csv")" -ge 3 ]; do sleep 1; done
pids=$(pgrep -f -- "$WORKER_TMP" | tr '\n' ' ')
log "3 jobs done; killing the worker node's processes (SIGKILL): $pids"
grep -c ',ok,' "$OUT/batch_kill/summary.csv" | xargs -I{} echo "ok before the kill: {}" \
    | tee -a "$OUT/demo.log"
kill -9 $pids
wait $batch && rc=0 || rc=$?
log "batch after the kill: exit code $rc"
tail -n 3 "$OUT/batch_kill.log" | tee -a "$OUT/demo.log"
cat "$OUT/batch_kill/summary.csv" | tee -a "$OUT/demo.log"
"$V/python" - "$OUT/batch_kill" <<'EOF' | tee -a "$OUT/demo.log"
import sys
from pathlib import Path
out = Path(sys.argv[1])
files = {"deformed.ply", "deformed.obj", "result.json", "overlay.png", "optimisation.gif"}
bad = []
for d in sorted(p for p in out.iterdir() if p.is_dir()):
    names = {p.name for p in d.iterdir() if not p.name.startswith(".")}
    sets = [p.name for p in (d / ".regtool-sets").iterdir()]
    if not files <= names or len(sets) != 2:  # the set link and its one generation
        bad.append((d.name, sorted(names), sets))
print(f"{sum(1 for p in out.iterdir() if p.is_dir())} job folders, incomplete: {bad or 'none'}")
EOF
"$V/python" - "$OUT/batch" "$OUT/batch_kill" <<'EOF' | tee -a "$OUT/demo.log"
import csv, json, sys
from pathlib import Path
first, second = (Path(p) for p in sys.argv[1:3])
jobs = [r["job"] for r in csv.DictReader(open(second / "summary.csv"))]
same = [j for j in jobs if json.loads((first / j / "result.json").read_text())["z"]
        == json.loads((second / j / "result.json").read_text())["z"]]
print(f"jobs of the second batch with the same z as in the first: {len(same)} of {len(jobs)}")
EOF
log "stopping the cluster"
