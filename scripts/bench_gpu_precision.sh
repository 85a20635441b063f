#!/usr/bin/env bash
# The GPU measurements left open by the first run of scripts/bench_gpu.sh (BENCHMARKS.md, "GPU figures"), in one
# short run that fits a 15-minute device lease. Each part has its own time limit and log:
#   1. the KL term's rounding under bf16 and fp16 against fp32 on SD 1.5's architecture at the sd15 preset's
#      settings (512x512, 50 DDIM steps, last 10 attached, 2 trajectories, CFG 7.5), with each precision's time and
#      peak memory for one loss + gradient (app.tools.kl_bf16; docs/sd15-memory.md);
#   2. one fine-tuning step at K = 25, ours against the baseline (2 interleaved repetitions after a warm-up);
#   3. the baseline's peak memory at K = 25 (with ours again, each in a fresh process).
# Usage: bash scripts/bench_gpu_precision.sh OUTDIR [PYTHON] [SIZE]
#   SIZE: the latent side (default 64 = 512 px); a small one (8) makes a CPU dry run of the script possible.
# Exits 2 if a part failed or hit its limit (the others' results are kept).
set -u
out=${1:?usage: bash scripts/bench_gpu_precision.sh OUTDIR [PYTHON] [SIZE]}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
py=${2:-.venv/bin/python}
size=${3:-64}
device=cuda
precisions=(fp32 bf16 fp16)
if [ "$size" != 64 ]; then  # a dry run: small sizes, the CPU if there is no GPU
    "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || { device=cpu; precisions=(fp32 bf16); }
    small=(--size "$size" --image-size 32 --steps 3 --batch 1 --reps 1 --no-flops)
    smallkl=(--size "$size" --steps 3 --attached 2 --batch 1 --deltas 1e-3 0)
else
    small=()
    smallkl=(--deltas 1e-2 1e-3 1e-4)
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{ date -u; nvidia-smi 2>&1 | head -15; "$py" -c 'import torch, diffusers, peft; print(torch.__version__, diffusers.__version__, peft.__version__)'; } > "$out/env.txt" 2>&1
failed=()
part() {  # part NAME LIMIT_S CMD...
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): $*" | tee -a "$out/$name.log"
    local t0=$SECONDS
    timeout -k 20 "$limit" "$@" >>"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/$name.log"
    [ "$rc" -eq 0 ] || failed+=("$name")
}
part kl-precision 240 "$py" -m app.tools.kl_bf16 --model sd15-arch --device "$device" --precisions "${precisions[@]}" \
    --per-value "${smallkl[@]}"
sd15=(--model sd15-arch --device "$device" --workdir "$out/.work")
part finetune-k25 230 "$py" -m seiko_core.bench "${sd15[@]}" --parts finetune --k 25 --reps 2 --no-flops "${small[@]}" \
    --out "$out/finetune-k25.json"
small_mem=()
[ "$size" != 64 ] && small_mem=(--size "$size" --image-size 32 --steps 3 --batch 1)
part memory-k25 100 "$py" -m seiko_core.bench "${sd15[@]}" --parts memory --memory-k 25 "${small_mem[@]}" \
    --out "$out/memory-k25.json"
rm -rf "$out/.work"
if [ ${#failed[@]} -gt 0 ]; then
    echo "parts that failed or hit their limit: ${failed[*]}"
    exit 2
fi
