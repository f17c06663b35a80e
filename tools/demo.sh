#!/usr/bin/env bash
# `make demo`: Fashion-MNIST -> LMDB -> LeNet, then the test accuracy.
# Every step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SRC=/usr/share/datasets/fashion-mnist

if [ ! -d "$SRC" ]; then
  echo "== installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

pick() {  # the IDX file, gzipped or not
  for f in "$SRC/$1" "$SRC/$1.gz"; do [ -f "$f" ] && { echo "$f"; return; }; done
  echo "demo: $SRC/$1 not found" >&2; exit 1
}

mkdir -p data snapshots
for split in train:train t10k:test; do
  prefix=${split%%:*}; name=${split##*:}
  db=data/fashion_mnist_${name}_lmdb
  if [ ! -d "$db" ]; then
    echo "== converting $prefix to $db"
    $PY -m pycaffe_dist convert_mnist_data "$(pick $prefix-images-idx3-ubyte)" \
        "$(pick $prefix-labels-idx1-ubyte)" "$db"
  fi
done

echo "== training LeNet: pycaffe-dist train --solver solvers/lenet_solver.prototxt"
start=$(date +%s)
$PY -m pycaffe_dist train --solver solvers/lenet_solver.prototxt 2>&1 | tee data/demo_train.log
seconds=$(( $(date +%s) - start ))
accuracy=$(grep -oE "Test net output #[0-9]+: accuracy = [0-9.]+" data/demo_train.log | tail -n 1 | awk '{print $NF}')
if [ -z "$accuracy" ]; then
  echo "demo: training printed no test accuracy (see data/demo_train.log)" >&2
  exit 1
fi
echo
echo "Fashion-MNIST test accuracy: $accuracy (LeNet, trained in ${seconds}s)"
