#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md ("GPU figures") in one run, each part under its own time limit so that one
# slow part cannot take the others' results with it:
#   1. a smoke run (tiny sizes) that fails fast if the CUDA path is broken;
#   2. peak memory of one fine-tuning micro-batch (ours and the reference-style baseline, K = 10 and 25), each in a
#      fresh process: K = 10 is the sd15 preset's setting, to compare with docs/sd15-memory.md's computed estimate;
#   3. one fine-tuning step, ours against the baseline, K = 1, 10, 25 (interleaved repetitions);
#   4. sampling throughput, batch 8 and 16;
#   5. a full SEIKO round of the embedded shapes model on the GPU.
# SD 1.5's architecture is built from configs/sd15 with random weights (no hub): 512x512, 50 DDIM steps, CFG 7.5,
# bf16 autocast and diffusers' per-block gradient checkpointing (the CUDA defaults of `python -m seiko_core.bench`).
#
# Usage: bash scripts/bench_gpu.sh OUTDIR [PYTHON]      (PYTHON defaults to .venv/bin/python)
# On one H200 the parts take about 15 minutes together (the limits below); the first run's shorter limits, set from
# CPU figures, cut the memory, fine-tuning and sampling parts short (BENCHMARKS.md, "GPU figures").
# Writes OUTDIR/env.txt (GPU, driver, library versions), OUTDIR/bench.log and one JSON per part.
set -u
out=${1:?usage: bash scripts/bench_gpu.sh OUTDIR [PYTHON]}
py=${2:-.venv/bin/python}
mkdir -p "$out"
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

part() {  # part NAME LIMIT_S ARGS...: one bench run under `timeout`, its log appended to bench.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): python -m seiko_core.bench $*" | tee -a "$log"
    local t0=$SECONDS
    timeout "$limit" "$py" -m seiko_core.bench "$@" >>"$log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
    return $rc
}

sd15=(--model sd15-arch --device cuda --workdir "$out/.work")
part smoke 60 "${sd15[@]}" --size 8 --image-size 32 --steps 3 --k 1 --reps 1 --batch 1 --sample-batches 2 \
    --parts finetune,sampling --no-flops --out "$out/.work/smoke.json" || exit 1
part memory 240 "${sd15[@]}" --parts memory --memory-k 10,25 --out "$out/memory.json"
part finetune 420 "${sd15[@]}" --parts finetune --k 1,10,25 --reps 3 --out "$out/finetune.json"
part sampling 180 "${sd15[@]}" --parts sampling --sample-batches 8,16 --reps 3 --out "$out/sampling.json"
part shapes-round 50 --model shapes --device cuda --parts round --out "$out/shapes-round.json"
rm -rf "$out/.work"
exit 0
