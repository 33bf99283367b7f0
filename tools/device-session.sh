#!/usr/bin/env bash
# A measuring session on a lent GPU machine, across device calls of at most 10 minutes each. Here
# first: `bash tools/device-wheels.sh`; then each device call (the device tool's `run`, from the repo
# root, carry [".whl", ".whlaud", ".whlcv"], timeout 600):
#
#   WAIT=520 bash tools/device-session.sh [STAGE ...]     # default: STAGES; the others below by name
#
# The first call copies the tree to /tmp/repo, installs the wheels into /tmp/site, writes what the
# machine is (gpu.txt) and starts the stages detached (setsid): they go on between calls. Every call
# waits up to $WAIT s (or until the last stage ends), brings /tmp/res back as $OUT/res.tgz and prints
# each stage's key lines. Call again at once: a machine idle for 30 s is given back, and its work with it.
# gpu.txt names the code sent by a digest of its content (`bash tools/device-session.sh --digest`
# prints the same line here). Each stage is a process of its own (a failed CUDA capture leaves the
# next stage's state clean), under its own time limit, its work directory removed after it (dlrm's tables take 44.8 GiB of 64).
set -uo pipefail
RES=/tmp/res
STAGES=(rnnt ssd bert unet dlrm tests fp8)
EXTRA=(bertoff dlrm-spy dlrm-w4 dlrm-server tests-dlrm fp8short fp8sweep tests-fp8 fp8final fp8stem fp8parts chain-s1 fp8new tests-chain)  # by name only
M="python3 benchmarks/models.py --samples 16 --seconds 10"

run_stage() {  # name -> limit (s) and command
    case $1 in
        rnnt) echo 300 "$M --server --max-probes 4 --no-profile --benchmarks rnnt" ;;
        ssd) echo 300 "$M --server --max-probes 4 --benchmarks ssd-resnet34" ;;
        bert) echo 300 "$M --server-only --max-probes 4 --benchmarks bert" ;;  # Offline: 1,744.8/s at 03:04
        unet) echo 420 "$M --benchmarks 3d-unet" ;;  # 16 full-size cases made on the host first: minutes
        # 512 users (about 135,000 rows): ids spread over the tables, not a few thousand rows in L2
        dlrm) echo 540 "$M --samples 512 --server --max-probes 4 --benchmarks dlrm" ;;
        bertoff) echo 240 "$M --benchmarks bert" ;;  # Offline in order of length
        # dlrm's Offline again, its host side sampled by py-spy (collapsed stacks, a count each)
        dlrm-spy) echo 400 "/tmp/site/bin/py-spy record --threads --idle -r 50 -f raw -o $RES/dlrm-spy/pyspy.txt -- \
$M --samples 512 --benchmarks dlrm" ;;
        dlrm-w4) echo 400 "$M --samples 512 --no-profile --workers dlrm=4 --benchmarks dlrm" ;;  # 4 instances on 16 cores
        tests-dlrm) echo 150 "python3 -m pytest -q --confcutdir=tests/harness tests/harness/test_torch_external.py tests/harness/test_harness_gpu.py::test_fused_fp8_gemm_equals_cublas_and_the_epilogue" ;;
        # resnet50 fp8 with E4M3 residuals and the swept tiles: the gate, plain loops (fp16 beside), Offline
        fp8short) echo 300 "python3 benchmarks/gpu_fp8.py --variants all-triton-r8 --seconds 12 --no-server --no-profile --budget 220" ;;
        # dlrm's Server at 16,384 rows: no VALID target on an H100 before the SUT's switch interval (BENCHMARKS.md)
        dlrm-server) echo 400 "$M --samples 512 --server-only --max-probes 5 --server-batch dlrm=16384 --benchmarks dlrm" ;;
        tests) echo 300 "python3 -m pytest -q -s --confcutdir=tests/harness tests/harness/test_harness_gpu.py tests/harness/test_torch_graph.py tests/harness/test_torch_external.py" ;;
        # fp8_gemm through pointers against TMA and the early residual: each shape, then the model
        fp8sweep) echo 560 "python3 benchmarks/gpu_fp8.py --gemms wide --variants all-triton-r8 all-triton-r8-z all-triton-r8-tma --seconds 12 --no-server --budget 460" ;;
        # the whole issue-23 run with the defaults: gate, plain loops, Offline, Server tuned, profile
        fp8final) echo 560 "python3 benchmarks/gpu_fp8.py --variants default --seconds 12 --budget 460" ;;
        # the 7x7 stem in FP8 (and its E4M3 max-pool) and the defaults before persist against the defaults:
        # the gate, the model; Offline with 1 and 2 instances
        fp8stem) echo 560 "python3 benchmarks/gpu_fp8.py --variants default stem zearly --instances 1 2 --seconds 12 --no-server --budget 460" ;;
        # each shape alone (the stem's among them; persistent too) and each block-to-block pair apart and
        # chained (fp8_gemm.chain: wrong on an H100, 2026-12-06)
        fp8parts) echo 400 "python3 benchmarks/gpu_fp8.py --gemms default+zearly default+zearly+persist --chains --parts-only --budget 330" ;;
        # the chained blocks, the second product in E4M3 (wrong on an H100) and in fp16, each compiled by
        # Triton's ptxas and by torch's (CUDA 13.0's, which crashed on the E4M3 one): a pass lifts the refusal
        tests-chain) echo 240 "python3 -m pytest -q -rxXs --confcutdir=tests/harness tests/harness/test_harness_gpu.py -k chained" ;;
        # the chained blocks (wrong on an H100 at 3 stages) with one stage: a pipelining race? (no: wrong too)
        chain-s1) echo 150 "env MLPERF_TORCH_FP8_CHAIN_TILES=64,128,64,8,1 python3 -m pytest -q --confcutdir=tests/harness tests/harness/test_harness_gpu.py -k chain" ;;
        # the defaults (persist among them since 2026-12-06), 2 instances as the H200's config: Offline, Server tuned
        fp8new) echo 420 "python3 benchmarks/gpu_fp8.py --variants default --instances 2 --seconds 10 --no-profile --budget 330" ;;
        tests-fp8) echo 400 "python3 -m pytest -q -s --confcutdir=tests/harness tests/harness/test_harness_gpu.py -k fp8" ;;
        fp8) echo 580 "python3 benchmarks/gpu_fp8.py --gemms wide --variants all-triton all-triton-r8 --seconds 12 --budget 480" ;;
        *) return 1 ;;
    esac
}

tree_digest() {  # the code a run measured: harness, benchmarks, tools and tests, by content
    echo "tree $(find harness benchmarks tools tests -type f \( -name '*.py' -o -name '*.sh' -o -name '*.yaml' \) \
        -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"
}
if [ "${1:-}" = --digest ]; then tree_digest; exit 0; fi

if [ "${1:-}" = --stages ]; then  # the detached part, in /tmp/repo
    shift
    export PYTHONPATH=/tmp/site:harness:benchmarks:tests/harness MLPERF_BENCH_WORKDIR=/tmp/mb
    for name in "$@"; do
        read -r limit cmd <<< "$(run_stage "$name")"
        mkdir -p "$RES/$name"
        echo "$(date -u +%T) start $name: $cmd"
        # The GPU's clocks, power and temperature each second (why a long run is slower than a short one)
        q=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu
        (nvidia-smi --query-gpu=$q,clocks_event_reasons.active --format=csv,noheader -l 1 2>/dev/null \
            || nvidia-smi --query-gpu=$q --format=csv,noheader -l 1) > "$RES/$name/smi.csv" 2>&1 &
        smi=$!
        OUT=$RES/$name timeout -k 30 "$limit" $cmd > "$RES/$name/log.txt" 2>&1  # -k: a hung CUDA process is killed
        rc=$?  # before anything else runs
        pkill -P $smi 2>/dev/null; kill $smi 2>/dev/null
        echo "$(date -u +%T) end $name rc=$rc; $(awk -F', ' '$2+0 > 0 { n++; c = $2 + 0; p = $4 + 0
            if (!lo || c < lo) lo = c; if (c > hi) hi = c; if (p > pw) pw = p }
            END { if (n) printf "SM clock %d-%d MHz, power up to %.0f W over %d s", lo, hi, pw, n }' "$RES/$name/smi.csv")"
        rm -rf /tmp/mb
    done
    touch "$RES/DONE"
    exit 0
fi

WAIT=${WAIT:-520}
t0=$(date +%s)
if [ ! -f $RES/started ]; then
    wanted=("${@:-${STAGES[@]}}")
    for name in "${wanted[@]}"; do run_stage "$name" > /dev/null || { echo "unknown stage $name (stages: ${STAGES[*]} ${EXTRA[*]})"; exit 2; }; done
    mkdir -p $RES && touch $RES/started
    rm -rf /tmp/repo && cp -r . /tmp/repo
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl .whlaud/*.whl .whlcv/*.whl > $RES/pip.txt 2>&1 || { cat $RES/pip.txt; exit 1; }
    # The tree sent, by content (the machine's .git is not this checkout's: its log named an old
    # commit); the same line here names it: bash tools/device-session.sh --digest
    { nvidia-smi; df -h /tmp; nproc; free -g; tree_digest
      python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } > $RES/gpu.txt 2>&1
    (cd /tmp/repo && setsid nohup bash tools/device-session.sh --stages "${wanted[@]}" > $RES/stages.txt 2>&1 < /dev/null &)
fi
while [ ! -f $RES/DONE ] && [ $(( $(date +%s) - t0 )) -lt "$WAIT" ]; do sleep 5; done
tar czf "$OUT/res.tgz" -C /tmp res 2>/dev/null
cat $RES/stages.txt
for f in $RES/*/log.txt; do
    echo "== $f"
    grep -E "\] |FAILED|Error|error|VALID|ratio|Server|passed|failed" "$f" | tail -40
done
