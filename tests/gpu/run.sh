#!/usr/bin/env bash
# The GPU check: run it whenever a GPU machine is lent (one command, under 8 minutes on one GPU).
#   tests/gpu/run.sh [OUT_DIR]            the GPU-marked tests, then kancodec bench gpu (speed at
#                                         1/8/64 windows, a 60 s file at the standard preset)
#   tests/gpu/run.sh --dry-run [OUT_DIR]  the same steps on the CPU at toy sizes (tested in CI)
# Writes OUT_DIR/tests.txt, OUT_DIR/gpu.json and OUT_DIR/gpu.txt (default OUT_DIR: gpu-check).
set -euo pipefail
dry=()
if [[ "${1:-}" == "--dry-run" ]]; then dry=(--dry-run); shift; fi
out="${1:-gpu-check}"
mkdir -p "$out"
cd "$(dirname "$0")/../.."
py="${PYTHON:-python3}"
echo "== GPU-marked tests" | tee "$out/tests.txt"
set +e
"$py" -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee -a "$out/tests.txt"
status=${PIPESTATUS[0]}
set -e
# 5: no test ran (the dry run on a machine without a GPU deselects or skips them all)
if [[ $status -ne 0 && $status -ne 5 ]]; then echo "GPU tests failed ($status)"; exit "$status"; fi
echo "== kancodec bench gpu"
"$py" -m kancodec bench gpu "${dry[@]}" --json "$out/gpu.json" --force 2>&1 | tee "$out/gpu.txt"
exit "${PIPESTATUS[0]}"
