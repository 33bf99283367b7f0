#!/usr/bin/env bash
# The Python wheels a lent GPU machine needs beside its image (CPython 3.12 with torch, onnx,
# onnxruntime, numpy, scipy, scikit-learn, numba, tokenizers, requests, rich, typer, pyyaml; see the
# device tool's KINDS.md), fetched here from PyPI into folders the repo ignores, to travel with a
# device call (`carry: [".whl", ".whlaud", ".whlcv"]`, 60 MiB of the 64 allowed) and be installed
# there first (tools/device-session.sh does, then runs the measurements):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl .whlaud/*.whl .whlcv/*.whl
#   export PYTHONPATH=/tmp/site:harness:benchmarks
# Each package is named with the ones it needs that the image lacks (pip runs with --no-deps there):
# a missing one fails only when imported (2026-12-05: rnnt's librosa -> pooch -> platformdirs).
set -euo pipefail
cd "$(dirname "$0")/.."
for d in .whl .whlaud .whlcv; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
get() {
    local dir=$1; shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$dir" "$@"
}
# The harness: LoadGen, the typed configs, the general torch path, retries, COCO's mAP (ssd).
get .whl mlcommons-loadgen==6.0.17 "pydantic==2.14.4" "pydantic-core==2.50.5" annotated-types typing-inspection \
    "typing-extensions>=4.16" onnx2torch tenacity pycocotools
# py-spy (/tmp/site/bin/py-spy there): where the harness's threads spend their host time, e.g.
# `py-spy dump --pid P` during ssd's harness run (0.69 of its plain loop on 2026-12-05).
get .whl --platform manylinux_2_5_x86_64 py-spy==0.4.3
# rnnt's audio (librosa and what it imports at load) and 3d-unet's NIfTI volumes.
get .whlaud "librosa<1" audioread soundfile cffi pycparser soxr pooch platformdirs decorator nibabel
# The reference preprocessing's OpenCV, the version the harness was measured with on the H200.
get .whlcv opencv-python-headless==4.10.0.84
du -sh .whl .whlaud .whlcv
