#!/usr/bin/env bash
# The CUDA figures, in one run on a GPU machine (not a test; CI has no GPU):
#   - the GPU's masks against the CPU's fp32 masks, and ms per slice, with LiteMedSAM's real weights;
#   - ms per slice of the other SAM-family encoders with random weights (timing only: their weights are large);
#   - the CVPR 2025 click protocol on the phantoms and on a 140 x 384 x 384 CT-sized phantom, encoder on the GPU;
#   - the engine's predictor and click tests with CUDA present (where "auto" picks the GPU).
# Needs LiteMedSAM's weights in $MEDFOUNDATIONSEG_CACHE and the engine's packages (PyMaxflow for the graph cut).
#
#     bash benchmarks/cuda_checks.sh [OUTPUT_FOLDER]        # one log per step, default benchmarks/out/cuda
set -u
out=${1:-benchmarks/out/cuda}
mkdir -p "$out"
export PYTHONPATH="$PWD/MedFoundationSeg${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.txt, print its last lines
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    echo "== $name: rc $? in $((SECONDS - start)) s"
    tail -n 4 "$out/$name.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"

slices="$py benchmarks/bench_slice_predictor.py --device cuda"
step slice_litemedsam_vs_cpu 90 $slices --model litemedsam --slices 16 --reference-device cpu
step slice_litemedsam 90 $slices --model litemedsam --slices 40
interactive="$py benchmarks/bench_interactive.py --colin-queries 0 --models litemedsam --clicks 5"
step interactive_phantoms 150 $interactive --phantoms 2 --procedures correct panel --json "$out/interactive_phantoms.json"
step interactive_ct384 150 $interactive --phantoms 1 --phantom-shape 140 384 384 --procedures correct panel \
    --json "$out/interactive_ct384.json"
for model in mobilesam sam_vit_b sam_vit_l sam_vit_h; do
    step "slice_${model}_random_init" 90 $slices --model "$model" --slices 24 --random-init
done
step pytest_engine 120 $py -m pytest -q -p no:cacheprovider Testing/test_slice_predictor.py \
    Testing/test_sam_models.py Testing/test_clicks.py Testing/test_evidence.py Testing/test_head_learning.py \
    Testing/test_structure_head.py
