#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md ("GPU figures") in one run. Each part runs under its own time limit and
# writes its own JSON, so that one slow part, or one that runs out of GPU memory, cannot take the others' results
# with it:
#   1. a smoke run (tiny sizes) that stops the script at once if the CUDA path is broken;
#   2. peak memory of one fine-tuning micro-batch (ours and the reference-style baseline), each in a fresh process:
#      K = 10 is the sd15 preset's setting (about 24 GiB on an H200), K = 25 needs about 38 GiB and so a card larger
#      than 40 GB;
#   3. one fine-tuning step, ours against the baseline, K = 1, 10 and 25 (interleaved repetitions);
#   4. sampling throughput, batch 8 and 16;
#   5. a full SEIKO round of the embedded shapes model on the GPU.
# SD 1.5's architecture is built from configs/sd15 with random weights (no hub): 512x512, 50 DDIM steps, CFG 7.5,
# bf16 autocast and diffusers' per-block gradient checkpointing (the CUDA defaults of `python -m seiko_core.bench`).
#
# Usage: bash scripts/bench_gpu.sh OUTDIR [PYTHON]      (PYTHON defaults to the checkout's .venv/bin/python)
# Writes OUTDIR/env.txt (GPU, driver, library versions), OUTDIR/bench.log and one JSON per part. The limits below add
# up to 25 minutes; on one H200 the parts that finished took about a third of their limits (BENCHMARKS.md). Exits 1
# if the smoke run fails, 2 if any later part failed or hit its limit (the others' results are kept).
set -u
out=${1:?usage: bash scripts/bench_gpu.sh OUTDIR [PYTHON]}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1  # the checkout: `-m seiko_core.bench` and the default interpreter are read from it
py=${2:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
log="$out/bench.log"
{
    date -u
    nvidia-smi || echo "nvidia-smi: not found"
    "$py" -c 'import sys, torch, diffusers, transformers, peft, accelerate
print("python", sys.version.split()[0])
for m in (torch, diffusers, transformers, peft, accelerate):
    print(m.__name__, m.__version__)
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory / 2**30, "GiB")'
} > "$out/env.txt" 2>&1

failed=()
part() {  # part NAME LIMIT_S ARGS...: one bench run under `timeout`, its log appended to bench.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): python -m seiko_core.bench $*" | tee -a "$log"
    local t0=$SECONDS
    timeout -k 30 "$limit" "$py" -m seiko_core.bench "$@" >>"$log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
    [ "$rc" -eq 0 ] || failed+=("$name")
    return $rc
}

sd15=(--model sd15-arch --device cuda --workdir "$out/.work")
part smoke 90 "${sd15[@]}" --size 8 --image-size 32 --steps 3 --k 1 --reps 1 --batch 1 --sample-batches 2 \
    --parts finetune,sampling --no-flops --out "$out/.work/smoke.json" || exit 1
failed=()
part memory-k10 120 "${sd15[@]}" --parts memory --memory-k 10 --out "$out/memory-k10.json"
part memory-k25 150 "${sd15[@]}" --parts memory --memory-k 25 --out "$out/memory-k25.json"
part finetune-k1 150 "${sd15[@]}" --parts finetune --k 1 --reps 3 --out "$out/finetune-k1.json"
part finetune-k10 300 "${sd15[@]}" --parts finetune --k 10 --reps 3 --out "$out/finetune-k10.json"
part finetune-k25 420 "${sd15[@]}" --parts finetune --k 25 --reps 3 --no-flops --out "$out/finetune-k25.json"
part sampling 180 "${sd15[@]}" --parts sampling --sample-batches 8,16 --reps 3 --out "$out/sampling.json"
part shapes-round 90 --model shapes --device cuda --parts round --out "$out/shapes-round.json"
rm -rf "$out/.work"
if [ ${#failed[@]} -gt 0 ]; then
    echo "parts that failed or hit their limit: ${failed[*]} (see $log)" | tee -a "$log"
    exit 2
fi
exit 0
