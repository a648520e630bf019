#!/usr/bin/env bash
# The prepared GPU measurement (one run on a lent H200): merge and evaluator benchmarks, JSON into ${OUT:-.}.
# The evaluator benchmark times the encoder with stock attention, SDPA and the Triton kernel (search/flash_rel_pos.py),
# eager and torch.compile'd, with peak memory each and the Triton encoder's bf16 deviation from the SDPA encoder.
# The GPU image has torch but not segment-anything or pydantic: put their wheels (for its Python) in .whl/ first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
out="${OUT:-.}"
nvidia-smi -L
python3 -c "import triton; print('triton', triton.__version__)" || echo "triton is not installed: no Triton encoder variants"
python3 benchmarks/merge_bench.py --device cuda --runs 20 --compare-cpu --json "$out/merge-gpu.json"
python3 benchmarks/eval_bench.py --device cuda --runs 10 --vit-b-batch 16 --json "$out/evaluate-gpu.json"
python3 benchmarks/search_bench.py --arch vit_b --trials 12 --device cuda --json "$out/search-gpu.json"
