#!/usr/bin/env bash
# The prepared GPU run (issue 15): one command of at most 8 minutes on a lent H200, one JSON per stage into
# ${OUT:-runs/gpu} as soon as the stage ends (each benchmark also rewrites its JSON after every measurement), plus
# run.json (machine, versions, each stage's outcome and wall time) and gpu.log (everything printed): 7 files.
#
#   merge      benchmarks/merge_bench.py: ms and peak GPU memory per merge method, whole ViT-B, base + 3
#              fine-tunes; TIES thresholds (kthvalue baseline vs the radix select); GPU vs CPU difference
#   encoder    benchmarks/eval_bench.py --stage encoder: ViT-B images/s and peak memory, stock / SDPA / Triton,
#              eager and torch.compile'd; the Triton encoder's bf16 deviation from SDPA
#   decoder    eval_bench.py --stage decoder: ViT-B mask decoder boxes/s, stock per slice vs batched across slices
#   evaluator  eval_bench.py --stage evaluator: a search trial's evaluation of one merge on 500 synthetic 1024²
#              slices (ViT-B): slices/s end to end and torch.cuda.max_memory_allocated (target ≤ 16 GB)
#   search     benchmarks/search_bench.py: a 10-trial ViT-B search, time split merge / evaluate / SMAC, peak memory
#   int8       benchmarks/int8_cpu_bench.py (issue 16, on the machine's CPU, not its GPU; only when named in
#              GPU_SH_STAGES): random ViT-B float32 vs int8 encoders built there and timed in interleaved rounds,
#              one thread per core and 2 threads, with the CPU's integer-dot-product flags
#
# Each stage has its own time budget (seconds, below). A stage runs under `timeout` at its budget; one stopped there
# keeps what it saved and its JSON says so; one whose budget no longer fits in the run's 480 s (GPU_SH_BUDGET to
# change) is skipped, and its JSON says why. A failing stage does not stop the others.
#
# Through the device tool: run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540), after
# benchmarks/gpu_wheels.sh here (the image lacks segment-anything, smac, pydantic, ...: see benchmarks/gpu_wheels.txt).
# GPU_SH_DRY_RUN=1 runs the same stages on CPU with the tiny architecture and tiny counts, with this machine's
# packages (PYTHON=... to name the interpreter); GPU_SH_STAGES="evaluator search" runs only those stages.
set -uo pipefail
cd "$(dirname "$0")/.." || exit
out="${OUT:-runs/gpu}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu.log") 2>&1
py="${PYTHON:-python3}"
run_budget=${GPU_SH_BUDGET:-480}
started=$SECONDS
dry="${GPU_SH_DRY_RUN:-}"

declare -A budget=([merge]=60 [encoder]=150 [decoder]=30 [evaluator]=100 [search]=100 [int8]=420)
declare -A args
if [[ -n "$dry" ]]; then
    device=cpu
    # Two shared CPU cores are not the H200: three times the time, the same rules.
    run_budget=$((3 * run_budget))
    for stage in "${!budget[@]}"; do budget[$stage]=$((3 * budget[$stage])); done
    args=(
        [merge]="benchmarks/merge_bench.py --device cpu --arch tiny --runs 2"
        [encoder]="benchmarks/eval_bench.py --device cpu --arch tiny --stage encoder --runs 1"
        [decoder]="benchmarks/eval_bench.py --device cpu --arch tiny --stage decoder --runs 1 --decoder-slices 4"
        [evaluator]="benchmarks/eval_bench.py --device cpu --arch tiny --stage evaluator --runs 1 --slices 8"
        [search]="benchmarks/search_bench.py --device cpu --arch tiny --inputs random --trials 2"
        [int8]="benchmarks/int8_cpu_bench.py --arch tiny --threads 0 --rounds 2"
    )
else
    device=cuda
    args=(
        [merge]="benchmarks/merge_bench.py --device cuda --runs 20 --compare-cpu"
        [encoder]="benchmarks/eval_bench.py --device cuda --arch vit_b --stage encoder --runs 10 --vit-b-batch 8"
        [decoder]="benchmarks/eval_bench.py --device cuda --arch vit_b --stage decoder --runs 10 --decoder-slices 32"
        [evaluator]="benchmarks/eval_bench.py --device cuda --arch vit_b --stage evaluator --runs 2 --slices 500"
        [search]="benchmarks/search_bench.py --device cuda --arch vit_b --trials 10"
        [int8]="benchmarks/int8_cpu_bench.py --arch vit_b --threads 0 2 --rounds 5 --calibration 4"
    )
    if ! compgen -G ".whl/*.whl" > /dev/null; then
        echo "no wheels in .whl/: run benchmarks/gpu_wheels.sh on the dev machine and carry .whl" >&2
        exit 1
    fi
    timeout 60 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
fi
export PYTHONUNBUFFERED=1

note() {  # note FILE KEY JSON: one key into a stage's JSON (made with the machine/version header if missing)
    "$py" benchmarks/measure.py "$1" "$2" "$3" --device "$device"
}

note "$out/run.json" run "{\"dry_run\": $([[ -n "$dry" ]] && echo true || echo false), \"budget_s\": $run_budget}"
for stage in ${GPU_SH_STAGES:-merge encoder decoder evaluator search}; do
    json="$out/$stage.json"
    left=$((run_budget - (SECONDS - started)))
    if ((left < budget[$stage])); then
        reason="skipped: ${left} s of the run's ${run_budget} s left, the stage's budget is ${budget[$stage]} s"
        echo "== $stage $reason"
        note "$json" status "\"$reason\""
        note "$out/run.json" "$stage" "{\"status\": \"$reason\"}"
        continue
    fi
    echo "== $stage (budget ${budget[$stage]} s): ${args[$stage]}"
    begin=$SECONDS
    # shellcheck disable=SC2086  # the arguments are meant to split
    timeout --kill-after=5 "${budget[$stage]}" "$py" ${args[$stage]} --json "$json"
    rc=$?
    case $rc in
        0) status="ok" ;;
        124 | 137) status="stopped at its budget of ${budget[$stage]} s: the figures are those saved before" ;;
        *) status="failed with exit status $rc: see gpu.log" ;;
    esac
    wall=$((SECONDS - begin))
    echo "== $stage: $status (${wall} s)"
    note "$json" status "\"$status\""
    note "$out/run.json" "$stage" "{\"status\": \"$status\", \"wall_s\": $wall, \"budget_s\": ${budget[$stage]}}"
done
rm -f "$out"/*.partial
echo "== done in $((SECONDS - started)) s; JSON in $out"
