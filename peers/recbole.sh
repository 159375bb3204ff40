#!/usr/bin/env bash
# Speed against the peer library: RecBole 1.2.1's SASRec and karma-bench's on the same split (s3rec/Beauty),
# one thread each, then results/perf/peer_recbole.json (shown in leaderboard.md's speed section).
#   bash peers/recbole.sh [DATA_DIR (default ../shared/data)] [EPOCHS (default 3)]
# Run from karma-bench's own venv (python -m benchmark... must import); RecBole gets a venv of its own,
# .venv-recbole, since it needs numpy<2 and pandas<3. Measure on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
EPOCHS=${2:-3}
if [ ! -x .venv-recbole/bin/python ]; then
  python3 -m venv .venv-recbole
  .venv-recbole/bin/pip install --quiet -r peers/requirements-recbole.txt
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python -m benchmark.peers export --data-dir "$DATA" --out "$WORK/atomic"
# from inside the scratch folder: RecBole writes its logs and tensorboard files into the working directory
ROOT=$(pwd)
(cd "$WORK" && OMP_NUM_THREADS=1 "$ROOT/.venv-recbole/bin/python" "$ROOT/peers/recbole_sasrec.py" --atomic "$WORK/atomic" \
  --name beauty --epochs "$EPOCHS" --out "$WORK/recbole.json")
OMP_NUM_THREADS=1 python -m benchmark.peers compare --data-dir "$DATA" --recbole "$WORK/recbole.json" \
  --out results/perf/peer_recbole.json
