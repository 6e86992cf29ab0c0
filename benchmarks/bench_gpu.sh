#!/usr/bin/env bash
# One command for a GPU machine: the kernel table at GPU-sized shapes, with
# achieved TFLOP/s against the device's datasheet peak, then the scaling
# sections (compile time, memory, weight sampling) at GPU sizes.
#
#   benchmarks/bench_gpu.sh [--dry-run] [OUT_DIR]
#
# Meant to finish within about five minutes on an H100/H200-class GPU (not
# yet timed on one). --dry-run runs the same steps at tiny shapes on whatever
# device JAX finds (a CPU too), to check that the command works. Tables go to
# stdout and to OUT_DIR (default results/bench_gpu) as markdown and JSON.
set -euo pipefail

dry_run=0
out=results/bench_gpu
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h | --help)
            sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "bench_gpu.sh: unknown option $arg" >&2
            exit 2
            ;;
        *) out=$arg ;;
    esac
done

cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
mkdir -p "$out"

if [ "$dry_run" = 1 ]; then
    kernel_args=(--shape 16,32,4,4,2 --shape 8,64,3,4,2 --chunks 4 --repeats 1
        --min-repeats 1 --loop-members 4 --bins 512)
    scale_args=(--tiny --sections depth,members,sampling)
else
    # E,N,L,B,D. Weights alone: 4096 x 15 x 256^2 and 256 x 15 x 1024^2
    # floats, 16 GB each; with copies and outputs the peak is about 50 GB, so
    # this needs an 80 GB GPU or more (halve the members for a 40 GB one).
    kernel_args=(--shape 4096,256,16,16,2 --shape 256,1024,16,16,2
        --chunks 256,1024 --repeats 3 --min-repeats 2 --budget 5
        --loop-members 64 --no-torch)
    # Simulated host devices mean nothing on a GPU: section d is left out.
    scale_args=(--sections depth,members,sampling --width 256 --members 64
        --member-counts 256,1024,4096 --sample-width 256 --sample-depth 32
        --sample-members 64,1024)
fi

"$python" benchmarks/bench_kernel.py --peak "${kernel_args[@]}" \
    --json "$out/kernel.json" | tee "$out/kernel.md"
echo
"$python" benchmarks/bench_scale.py "${scale_args[@]}" \
    --json "$out/scale.json" | tee "$out/scale.md"
