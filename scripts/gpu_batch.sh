#!/usr/bin/env bash
# Independent GPU jobs of one device call, one job per GPU, side by side (each job's timings are
# its own GPU's; jobs share only the host's CPUs). Usage, on the GPU machine, from the repo root:
#
#   OUT=/some/dir DATA_TGZ=.carry/data.tgz bash scripts/gpu_batch.sh JOB [JOB ...]
#
# JOB names (a function below): sweep, resume, flex, paper, versus, table2, model, evaluate,
# sanitize_triton, sanitize_cupy, racecheck_cupy, profile, replay, paperbwd, gputests,
# fwdvariants (fwdvar_causal, fwdvar_fixed, fwdvar_sparse, fwdvar_st_mix, fwdvar_local,
# fwdvar_strided, fwdvar_scale, fwdvar_cupy, fwdvar_cupy_bwd, fwdvar_paper), sanitize_cupy_tiles, memcheck_tma, sweep_large, sweep_small,
# sweep_tc_a .. sweep_tc_d, sweep_tc3_a .. sweep_tc3_c, wgmma_probe, wgmma_check, fwdvar_wgmma, profile_cupy_fwd,
# hostsplit, hostsplit_fwd, dlpack_cost, fwdvar_paper12288, paper_split, fwdvar_local_tma,
# scale_split, paper_t, local_fb, triton_new_tests, memcheck_dkv_t, tritontests, paperbwd_12k,
# paperbwd_64k, ab_kernels, replay_flex, memcheck8, local_split8,
# cupytests, othertests;
# A+B runs A then B on one GPU. Argument i runs on GPU i mod (number of GPUs); arguments that
# share a GPU run one after another.
# The jobs share the host's CPUs: compile-heavy ones (sweep*, gputests, cupytests, othertests)
# slow each other down (session 4: two sweep halves beside two xdist test runs took 119 s for a
# precompile phase that takes 59 s on a quiet host, and stopped at their caps); give a sweep a
# host to itself or one light job beside it.
# Each job writes under $OUT/JOB/ and its log to $OUT/JOB/log; every step has a time cap so a
# hang costs one step, and the folder is packed into $OUT/JOB.tgz at the end (the device tool
# returns at most 8 files). DEADLINE_S (default 570) bounds the whole call.
set -u
export PYTHONUNBUFFERED=1
START=$(date +%s)
DEADLINE=$((START + ${DEADLINE_S:-570}))
NGPU=$(nvidia-smi -L | wc -l)
DATA=/tmp/stbench-data

left() { echo $((DEADLINE - $(date +%s))); }

# step CAP_S NAME CMD...: run CMD with a cap of min(CAP_S, time left - 15 s), logging its status
step() {
    local cap=$1 name=$2
    shift 2
    local t=$(( $(left) - 15 ))
    (( t > cap )) && t=$cap
    if (( t < 10 )); then echo "SKIP $name: no time left"; return 0; fi
    echo "=== $name (cap ${t}s) $(date -u +%T)"
    timeout --signal=INT --kill-after=10 "$t" "$@"
    echo "=== $name rc=$? after $(( $(date +%s) - START ))s"
}

data() { [[ -d $DATA ]] || { mkdir -p $DATA && tar xzf "${DATA_TGZ:-.carry/data.tgz}" -C $DATA --strip-components=1; }; }

job_sweep() {  # issue 6: the standard sweep, tuned, every backend and peer (report: on any CPU)
    # SWEEP_NS / SWEEP_BACKENDS: a part of the grid; SWEEP_PICKS: re-measure those rows, tune the rest
    step 570 sweep python3 -m stbench sweep --preset standard --out "$1" --isolate --tune \
        --max-minutes ${SWEEP_MINUTES:-9.2} --no-progress ${SWEEP_NS:+--ns $SWEEP_NS} \
        ${SWEEP_BACKENDS:+--backends $SWEEP_BACKENDS} ${SWEEP_PICKS:+--picks $SWEEP_PICKS}
}
# the same sweep split over two GPUs by N (merge: cat the two results.jsonl, then stbench report)
job_sweep_large() { SWEEP_NS=65536,2048,1024 job_sweep "$@"; }
job_sweep_small() { SWEEP_NS=32768,16384,8192,4096 job_sweep "$@"; }
# Triton and CuPy alone (issue 4's side by side, tuned), split over four GPUs by N
job_sweep_tc() { SWEEP_BACKENDS=triton,cupy SWEEP_MINUTES=${SWEEP_MINUTES:-8.5} job_sweep "$@"; }
job_sweep_tc_a() { SWEEP_NS=65536 job_sweep_tc "$@"; }
job_sweep_tc_b() { SWEEP_NS=32768,1024 job_sweep_tc "$@"; }
job_sweep_tc_c() { SWEEP_NS=16384,2048 job_sweep_tc "$@"; }
job_sweep_tc_d() { SWEEP_NS=8192,4096 job_sweep_tc "$@"; }
# the same over three GPUs (a fourth job beside them)
job_sweep_tc3_a() { SWEEP_NS=65536 job_sweep_tc "$@"; }
job_sweep_tc3_b() { SWEEP_NS=32768,2048,1024 job_sweep_tc "$@"; }
job_sweep_tc3_c() { SWEEP_NS=16384,8192,4096 job_sweep_tc "$@"; }

job_resume() {  # the standard sweep continued from $RESUME_DIR (a results folder carried along)
    cp -r "$RESUME_DIR/." "$1/"
    step 540 sweep python3 -m stbench sweep --preset standard --out "$1" --isolate --tune --resume \
        --max-minutes ${RESUME_MINUTES:-8} --no-progress
}

job_flex() {  # the flex peer's cost; TARGETS.md items 3 (paper masks) and 6 (scale)
    step 100 flex_overhead python3 scripts/gpu_flex_overhead.py
    step 200 paper python3 benchmarks/triton_vs_flex.py --suite paper --ns 12288,65536 --out "$1/paper.jsonl" --budget-s 170
    step 200 scale python3 benchmarks/triton_vs_flex.py --suite scale --ns 131072,262144,524288,1048576 \
        --out "$1/scale.jsonl" --budget-s 160
}

job_paper() {  # TARGETS.md item 3: the paper's exact masks at N = 12288 and 65536
    step 450 paper python3 benchmarks/triton_vs_flex.py --suite paper --ns 12288,65536 --out "$1/paper.jsonl" --budget-s 380
}

job_versus() {  # TARGETS.md item 3 at N = 12288, then items 1-2 at N = 65536 (tuned triton vs flex)
    step 200 paper12k python3 benchmarks/triton_vs_flex.py --suite paper --ns 12288 --out "$1/paper.jsonl" --budget-s 150
    step 400 standard65k python3 benchmarks/triton_vs_flex.py --suite standard --ns 65536 --out "$1/standard.jsonl" \
        --layouts st_mix,strided,local,fixed,causal --budget-s 320
}

job_table2() {  # issue 5: the paper's Table 2 in miniature, then text samples
    data
    step 500 table2 python3 scripts/gpu_table2.py --out "$1" --data-dir $DATA --minutes 2.4 --steps 1400
    step 60 text_samples python3 -m stbench model sample --checkpoint "$1/fixed/checkpoint.pt" --out "$1/samples" \
        --num 4 --length 400 --backend triton --dtype bf16 --device cuda --data-dir $DATA
}

job_model() {  # issue 5: an image model and completions; bits-per-dim parity on the GPU
    data
    step 150 images python3 -m stbench model train --preset images --out "$1/images" --steps 3000 --batch-size 32 \
        --lr 1e-3 --warmup 100 --eval-every 500 --eval-batches 20 --log-every 50 --dtype bf16 \
        --backend triton --device cuda --data-dir $DATA --minutes 1.9
    step 60 completions python3 -m stbench model sample --checkpoint "$1/images/checkpoint.pt" --out "$1/images" \
        --num 8 --backend triton --dtype bf16 --device cuda --data-dir $DATA
    for dt in bf16 fp32; do
        step 80 parity_$dt python3 -m stbench model parity --preset text-8k --backends dense,triton,cupy,flex \
            --batch-size 2 --dtype $dt --json --device cuda --data-dir $DATA
    done
}

job_evaluate() {  # TARGETS.md item 5: the tuner's pick against exhaustive search
    step 330 evaluate python3 -m stbench tune --evaluate --backends triton --out "$1" \
        --ns ${EVAL_NS:-4096,16384} --layouts ${EVAL_LAYOUTS:-causal,local,strided,fixed,st_mix}
}

job_sanitize_triton() {  # issue 3: compute-sanitizer memcheck over every Triton kernel variant
    sanitize triton memcheck
}

job_sanitize_cupy() {  # issue 4: memcheck and racecheck over every CUDA C++ kernel variant
    sanitize cupy memcheck racecheck
}

# sanitize BACKEND TOOL...: fill the kernel caches (a plain run), then each tool over the same run
sanitize() {
    local be=$1
    shift
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    step 150 warm_$be python3 scripts/gpu_sanitize.py --backend $be
    for tool in "$@"; do
        step 300 ${tool}_$be compute-sanitizer --tool $tool --error-exitcode 9 --print-limit 20 \
            python3 scripts/gpu_sanitize.py --backend $be
    done
}

job_replay() {  # issue 4: triton and cupy fwd+bwd at the committed sweep's picks (kernel change check)
    step ${REPLAY_CAP:-300} replay python3 -m stbench sweep --preset standard --backends triton,cupy \
        --modes fwd+bwd --picks reports/standard/results.jsonl --isolate --out "$1" --no-progress
}

# session 8: triton at an earlier sweep's picks (REPLAY_PICKS) beside flex at its default, no
# tuning: the targets' side-by-side ratios after a kernel change (REPLAY_LAYOUTS: causal,
# fixed and local, the layouts flex runs without the permutation's gathers)
job_replay_flex() {
    step ${REPLAY_CAP:-420} replay python3 -m stbench sweep --preset standard --backends triton,flex \
        --layouts ${REPLAY_LAYOUTS:-causal,fixed,local} --picks ${REPLAY_PICKS:-reports/session5/triton_picks.jsonl} \
        --isolate --out "$1" --no-progress --max-minutes ${REPLAY_MINUTES:-6.5}
}

# session 8: the local rows of a replay (SPLIT_PICKS, a results.jsonl) again, with each
# call's host / device split, beside flex; and the local forward with TMA loads, 2 stages
job_local_split8() {
    local picks=${SPLIT_PICKS:-reports/session8/call3/replay_flex/results.jsonl}
    local fb=(--layout local --n 1024,4096,16384,32768,65536 --mode fwd+bwd)
    step 120 flex_fb python3 scripts/gpu_fwd_variants.py --backend flex "${fb[@]}" >>"$1/rows.jsonl"
    step 150 triton_fb python3 scripts/gpu_fwd_variants.py --backend triton "${fb[@]}" \
        --picks "$picks" --tag picks >>"$1/rows.jsonl"
    step 60 flex_fwd python3 scripts/gpu_fwd_variants.py --backend flex --layout local \
        --n 32768,65536 >>"$1/rows.jsonl"
    step 60 triton_fwd python3 scripts/gpu_fwd_variants.py --backend triton --layout local \
        --n 32768,65536 --block 32 --config "$AB_LOCAL" >>"$1/rows.jsonl"
    grep "^{" "$1/rows.jsonl" | python3 -c "import json,sys
for l in sys.stdin:
    r = json.loads(l); print(r['backend'], r['n_ctx'], r['mode'], r['block'], r['ok'], r.get('median_ms'), 'host', r.get('host_ms'), 'device', r.get('device_ms'))"
}

job_paperbwd() {  # TARGETS.md item 3, forward+backward only (the fwd+bwd tune at the fwd pick)
    # in-process Inductor compiles: session 7's first call hung 300 s in the compile worker pool
    TORCHINDUCTOR_COMPILE_THREADS=1 \
    step ${PAPER_CAP:-450} paper python3 benchmarks/triton_vs_flex.py --suite paper --ns ${PAPER_NS:-12288,65536} \
        --modes fwd+bwd --out "$1/paper.jsonl" --budget-s $(( $(left) - 60 )) ${PAPER_EAGER:+--eager-mask}
}

# the two N of item 3 on two GPUs (session 7): 12288 with the BlockMask built eagerly, 65536
# compiled (its N x N predicate does not fit eagerly)
job_paperbwd_12k() { PAPER_NS=12288 PAPER_EAGER=1 job_paperbwd "$@"; }
job_paperbwd_64k() { PAPER_NS=65536 job_paperbwd "$@"; }

job_racecheck_cupy() {  # issue 4: racecheck alone, with the time the full 22 cases need
    sanitize cupy racecheck
}

# issue 4: memcheck and racecheck over the CuPy tile configs of the block-128 causal case
# (BLOCK_N = 128: the one-stage forward; WARP_M = 32), which the default-config cases do not run
SANITIZE_TILES=(--cases causal_b128 --config '{"BLOCK_M": 64, "BLOCK_N": 128}'
    --config '{"BLOCK_M": 128, "BLOCK_N": 128}' --config '{"BLOCK_M": 32, "BLOCK_N": 128}'
    --config '{"BLOCK_M": 128, "BLOCK_N": 64, "WARP_M": 32}' --config '{"BLOCK_M": 32, "BLOCK_N": 32, "WARP_M": 32}')
job_sanitize_cupy_tiles() {
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    step 120 warm_tiles python3 scripts/gpu_sanitize.py --backend cupy "${SANITIZE_TILES[@]}"
    for tool in racecheck memcheck; do
        step 200 ${tool}_tiles compute-sanitizer --tool $tool --error-exitcode 9 --print-limit 20 \
            python3 scripts/gpu_sanitize.py --backend cupy "${SANITIZE_TILES[@]}"
    done
}

# issues 3 and 4: Nsight Compute over each backend's kernels on the standard problem at N = 65536
# (clocks left alone); per profile NAME.ncu-rep and its raw and details pages as CSV
PROFILES=${PROFILES:-"triton:causal:fwd+bwd flex:causal:fwd+bwd cupy:causal:fwd+bwd triton:st_mix:fwd+bwd flex:st_mix:fwd+bwd cupy:st_mix:fwd+bwd"}
job_profile() {
    local ncu
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    export TORCHINDUCTOR_COMPILE_THREADS=1  # no compile subprocesses under ncu's injection
    for spec in $PROFILES; do
        IFS=: read -r be lay mode <<<"$spec"
        local name=${be}_${lay}_${mode/+/_}
        step 100 ncu_$name "$ncu" --clock-control none --profile-from-start off --target-processes all \
            --section SpeedOfLight --section Occupancy --section LaunchStats \
            --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats \
            -f -o "$1/$name" python3 scripts/gpu_profile.py --backend "$be" --layout "$lay" --mode "$mode"
        "$ncu" --import "$1/$name.ncu-rep" --csv --page raw >"$1/$name.raw.csv" 2>&1
        "$ncu" --import "$1/$name.ncu-rep" --csv --page details >"$1/$name.details.csv" 2>&1
    done
}

# issue 3: the forward's load variants (default, gather, tma) against flex (a process per problem
# and backend, every configuration of the set checked then timed in it: scripts/gpu_fwd_variants.py);
# FWDVAR_LAYOUTS / FWDVAR_NS pick the problems, FWDVAR_SET the configurations
FWDVAR_CONFIGS=(
    null
    '{"fwd_loads": "gather"}'
    '{"fwd_loads": "tma", "BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}'
)
# smaller forward tiles on the sparse layouts (latency-bound: more, shorter programs in flight);
# session 5 measured a persistent forward here too (2.5-3x slower, removed: kernels/triton/NOTES.md)
FWDVAR_SPARSE_CONFIGS=(
    null
    '{"BLOCK_M": 64, "BLOCK_N": 32}'
    '{"BLOCK_M": 64, "BLOCK_N": 32, "num_stages": 2}'
    '{"BLOCK_M": 64, "BLOCK_N": 16}'
    '{"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 2}'
    '{"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 2}'
    '{"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 2}'
    '{"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4}'
    '{"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 2}'
)
# TARGETS.md item 6 (st_mix, B = 1, N = 256k / 1M): 8-9 key blocks per row; tile shapes and stages
FWDVAR_SCALE_CONFIGS=(
    null
    '{"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}'
    '{"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}'
    '{"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2}'
    '{"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 2, "num_stages": 3}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}'
)
# issue 4: the CuPy forward's tile shapes, side by side with the Triton default (BLOCK_N = 128:
# the one-stage forward of session 5)
FWDVAR_CUPY_CONFIGS=(
    '{"kernel": "mma", "BLOCK_M": 32, "BLOCK_N": 32, "WARP_M": 32}'
    '{"kernel": "mma", "BLOCK_M": 32, "BLOCK_N": 32, "WARP_M": 16}'
    '{"kernel": "mma", "BLOCK_M": 64, "BLOCK_N": 32, "WARP_M": 16}'
    '{"kernel": "mma", "BLOCK_M": 64, "BLOCK_N": 64, "WARP_M": 16}'
    '{"kernel": "mma", "BLOCK_M": 64, "BLOCK_N": 64, "WARP_M": 32}'
    '{"kernel": "mma", "BLOCK_M": 128, "BLOCK_N": 64, "WARP_M": 32}'
    '{"kernel": "mma", "BLOCK_M": 128, "BLOCK_N": 64, "WARP_M": 16}'
    '{"kernel": "mma", "BLOCK_M": 32, "BLOCK_N": 128, "WARP_M": 16}'
    '{"kernel": "mma", "BLOCK_M": 64, "BLOCK_N": 128, "WARP_M": 16}'
    '{"kernel": "mma", "BLOCK_M": 128, "BLOCK_N": 128, "WARP_M": 16}'
)
# TARGETS.md item 3, the fixed mask's fwd+bwd: backward key tiles of 32 (the summary columns' width)
FWDVAR_PAPER_CONFIGS=(
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 32, "BWD_BLOCK_N": 32}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 128, "BWD_BLOCK_N": 32, "bwd_warps": 8}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "DQ_BLOCK_N": 64}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 128, "BWD_BLOCK_N": 32, "DQ_BLOCK_N": 64, "bwd_warps": 8}'
)
job_fwdvariants() {
    local -n cfgs=${FWDVAR_SET:-FWDVAR_CONFIGS}
    local be=${FWDVAR_BACKEND:-triton} args=() cfg
    for cfg in "${cfgs[@]}"; do args+=(--config "$cfg"); done
    for lay in ${FWDVAR_LAYOUTS:-causal fixed}; do
        for n in ${FWDVAR_NS:-65536 16384}; do
            for peer in ${FWDVAR_PEERS-flex}; do
                step 150 "${peer}_${lay}_$n" python3 scripts/gpu_fwd_variants.py --backend $peer \
                    --layout $lay --n $n --mode ${FWDVAR_MODE:-fwd} ${FWDVAR_KERNELS:+--kernels} \
                    >>"$1/fwd_variants.jsonl"
            done
            step ${FWDVAR_CAP:-300} "${be}_${lay}_$n" python3 scripts/gpu_fwd_variants.py --backend $be \
                --layout $lay --n $n --mode ${FWDVAR_MODE:-fwd} ${FWDVAR_KERNELS:+--kernels} "${args[@]}" \
                >>"$1/fwd_variants.jsonl"
        done
    done
    grep "^{" "$1/fwd_variants.jsonl" | python3 -c "import json,sys
for l in sys.stdin:
    r = json.loads(l); print(r['backend'], r['layout'], r['n_ctx'], r['config'], r['ok'], r.get('median_ms'), 'host', r.get('host_ms'), 'device', r.get('device_ms'), r.get('error', ''))"
}
job_fwdvar_causal() { FWDVAR_LAYOUTS=causal job_fwdvariants "$@"; }
job_fwdvar_fixed() { FWDVAR_LAYOUTS=fixed job_fwdvariants "$@"; }
job_fwdvar_sparse() {
    FWDVAR_SET=FWDVAR_SPARSE_CONFIGS FWDVAR_LAYOUTS="${SPARSE_LAYOUTS:-st_mix local strided}" job_fwdvariants "$@"
}
# st_mix and strided carry the permutation, which the flex peer pays in gathers (README): their
# flex rows are not the comparison, TARGETS.md's kernel-only figures are
job_fwdvar_st_mix() { SPARSE_LAYOUTS=st_mix FWDVAR_PEERS= FWDVAR_NS="65536 16384 4096" job_fwdvar_sparse "$@"; }
job_fwdvar_strided() { SPARSE_LAYOUTS=strided FWDVAR_PEERS= FWDVAR_NS="65536 16384 4096" job_fwdvar_sparse "$@"; }
job_fwdvar_local() { SPARSE_LAYOUTS=local FWDVAR_NS="65536 16384 4096" job_fwdvar_sparse "$@"; }
job_fwdvar_scale() {
    FWDVAR_SET=FWDVAR_SCALE_CONFIGS FWDVAR_LAYOUTS=st_mix FWDVAR_NS="1048576 262144" job_fwdvariants "$@"
}
job_fwdvar_cupy() {  # the CuPy tiles against the Triton default (the peer here)
    FWDVAR_SET=FWDVAR_CUPY_CONFIGS FWDVAR_BACKEND=cupy FWDVAR_PEERS=triton FWDVAR_LAYOUTS="causal st_mix" \
        FWDVAR_NS=65536 job_fwdvariants "$@"
}
FWDVAR_CUPY_BWD_CONFIGS=(
    '{"kernel": "mma", "BLOCK_M": 32, "BLOCK_N": 32, "WARP_M": 32}'
    '{"kernel": "mma", "BLOCK_M": 64, "BLOCK_N": 64, "WARP_M": 16}'
    '{"kernel": "mma", "BLOCK_M": 128, "BLOCK_N": 64, "WARP_M": 32}'
    '{"kernel": "mma", "BLOCK_M": 64, "BLOCK_N": 128, "WARP_M": 16}'
)
job_fwdvar_cupy_bwd() {  # fwd+bwd at a few of those tiles (the backward clamps BLOCK_N to 64)
    FWDVAR_SET=FWDVAR_CUPY_BWD_CONFIGS FWDVAR_MODE=fwd+bwd FWDVAR_BACKEND=cupy FWDVAR_PEERS=triton \
        FWDVAR_LAYOUTS="causal st_mix" FWDVAR_NS=65536 job_fwdvariants "$@"
}
# the fixed mask's fwd+bwd at N = 12288 (3.50x against 4x in session 6): backward variants
# around the 64 x 32 pick (stages, warps, dK/dV query tile, 16-key tiles)
FWDVAR_PAPER_BWD2_CONFIGS=(
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "bwd_stages": 3}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "DKV_BLOCK_M": 128}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "bwd_warps": 2}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 128, "BWD_BLOCK_N": 32}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 16}'
)
job_fwdvar_paper12288() {
    FWDVAR_SET=FWDVAR_PAPER_BWD2_CONFIGS FWDVAR_PEERS= FWDVAR_LAYOUTS=paper_fixed FWDVAR_NS=12288 \
        FWDVAR_MODE=fwd+bwd job_fwdvariants "$@"
}
# paper12288_kernels SET DIR: the fixed mask's fwd+bwd at N = 12288 under the configs of array
# SET, each kernel's device time in the rows (session 7)
paper12288_kernels() {
    local set=$1
    shift
    FWDVAR_SET=$set FWDVAR_PEERS= FWDVAR_LAYOUTS=paper_fixed FWDVAR_NS=12288 \
        FWDVAR_MODE=fwd+bwd FWDVAR_KERNELS=1 job_fwdvariants "$@"
}
# session 7: each kernel's share at the 64 x 32 pick and with 128-query dK/dV tiles
FWDVAR_PAPER_SPLIT_CONFIGS=(
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "DKV_BLOCK_M": 128}'
)
job_paper_split() { paper12288_kernels FWDVAR_PAPER_SPLIT_CONFIGS "$@"; }
# session 7: the local forward's TMA loads (in the space, never picked by a 10-evaluation tune)
FWDVAR_LOCAL_TMA_CONFIGS=(
    '{"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3}'
    '{"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3, "fwd_loads": "tma"}'
    '{"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2, "fwd_loads": "tma"}'
    '{"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "fwd_loads": "tma"}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "fwd_loads": "tma"}'
    '{"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3, "fwd_loads": "tma"}'
)
job_fwdvar_local_tma() {
    FWDVAR_SET=FWDVAR_LOCAL_TMA_CONFIGS FWDVAR_LAYOUTS=local FWDVAR_NS="${LOCAL_NS:-65536 16384 4096}" \
        FWDVAR_KERNELS=1 job_fwdvariants "$@"
}
# session 7, call 2: the transposed dK/dV (32-key tiles as wgmma) on the fixed mask's fwd+bwd
FWDVAR_PAPER_T_CONFIGS=(
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "DKV_BLOCK_M": 128}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "DKV_BLOCK_M": 128, "dkv_transposed": true}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "dkv_transposed": true}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "DKV_BLOCK_M": 128, "dkv_transposed": true, "bwd_stages": 3}'
    '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "DKV_BLOCK_M": 64, "dkv_transposed": true}'
)
job_paper_t() { paper12288_kernels FWDVAR_PAPER_T_CONFIGS "$@"; }
# session 7: local fwd+bwd at the sweep's pick and with the TMA forward (delta inside the dQ kernel)
FWDVAR_LOCAL_FB_CONFIGS=(
    '{"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 64}'
    '{"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2, "fwd_loads": "tma", "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 64}'
)
job_local_fb() {
    FWDVAR_SET=FWDVAR_LOCAL_FB_CONFIGS FWDVAR_LAYOUTS=local FWDVAR_NS="${LOCAL_FB_NS:-65536 32768}" \
        FWDVAR_MODE=fwd+bwd FWDVAR_KERNELS=1 job_fwdvariants "$@"
}
# session 7: st_mix at N = 1M (item 6), where flex's time goes (its gathers vs its kernel)
job_scale_split() {
    FWDVAR_SET=FWDVAR_SCALE_SPLIT_CONFIGS FWDVAR_LAYOUTS=st_mix FWDVAR_NS=1048576 FWDVAR_KERNELS=1 \
        job_fwdvariants "$@"
}
FWDVAR_SCALE_SPLIT_CONFIGS=('{"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}')
# session 8: this tree's Triton kernels against an earlier commit's, on one GPU, one process
# per tree, flex first. BASE_DIR holds that commit's kernels/triton (here:
# `mkdir -p .ab && git archive c3f05b5 kernels/triton | tar -x -C .ab`, carried as .ab); it is
# copied over this tree's for the "base" step and this tree's files are put back after it.
AB_PICK='"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "fwd_loads": "tma", "BWD_BLOCK_M": 128, "BWD_BLOCK_N": 128, "bwd_warps": 8'
AB_LOCAL='{"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2, "fwd_loads": "tma"}'
AB_SCALE='{"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}'
ab_rows() {  # ab_rows TAG CAP ARGS...: gpu_fwd_variants rows tagged TAG into $AB_OUT
    local tag=$1 cap=$2
    shift 2
    step "$cap" "${tag}_$(echo "$*" | md5sum | cut -c1-6)" python3 scripts/gpu_fwd_variants.py \
        --tag "$tag" "$@" >>"$AB_OUT"
}
ab_base_swap() {  # put the base tree's Triton kernels in (in), or this tree's back (out)
    if [[ $1 == in ]]; then
        rm -rf /tmp/triton_this && cp -r kernels/triton /tmp/triton_this
        cp "${BASE_DIR:-.ab/kernels/triton}"/*.py kernels/triton/
    else
        cp /tmp/triton_this/*.py kernels/triton/
    fi
}
job_ab_kernels() {
    export AB_OUT="$1/ab.jsonl"
    local dense=(--layout causal,fixed --n ${AB_NS:-4096,65536} --mode fwd,fwd+bwd)
    local local_=(--layout local --n 65536,32768 --block 32)
    local scale=(--layout st_mix --n 1048576)
    ab_rows flex 240 --backend flex "${dense[@]}"
    ab_rows flex 60 --backend flex --layout local --n 65536,32768
    ab_rows this 240 --backend triton "${dense[@]}" --config "{$AB_PICK}"
    ab_rows this 60 --backend triton "${local_[@]}" --config "$AB_LOCAL"
    ab_rows this 90 --backend triton "${scale[@]}" --config "$AB_SCALE"
    ab_base_swap in
    ab_rows base 240 --backend triton "${dense[@]}" --config "{$AB_PICK}"
    ab_rows base 60 --backend triton "${local_[@]}" --config "$AB_LOCAL"
    ab_rows base 90 --backend triton "${scale[@]}" --config "$AB_SCALE"
    ab_base_swap out
    grep "^{" "$AB_OUT" | python3 -c "import json,sys
for l in sys.stdin:
    r = json.loads(l); print(r.get('tag'), r['backend'], r['layout'], r['n_ctx'], r['mode'], r['config'], r['ok'], r.get('median_ms'), r.get('error', ''))"
}

job_fwdvar_paper() {  # fwd+bwd, no peer (flex's fwd+bwd: job_paperbwd)
    FWDVAR_SET=FWDVAR_PAPER_CONFIGS FWDVAR_PEERS= FWDVAR_LAYOUTS=paper_fixed FWDVAR_NS="12288 65536" \
        FWDVAR_MODE=fwd+bwd job_fwdvariants "$@"
}

job_memcheck_tma() {  # issue 3: memcheck over the TMA forward's GPU tests
    # (the keyword also matches every test of the module, through `pytestmark`: 10 bf16 tests)
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    local sel="tma and (bfloat16 or head_dim_128)"
    step 100 warm_tma python3 -m pytest -q -m gpu tests/kernels/test_triton_gpu.py -k "$sel"
    step 300 memcheck_tma compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
        python3 -m pytest -q -m gpu tests/kernels/test_triton_gpu.py -k "$sel"
}

# session 7: memcheck over the transposed dK/dV (bf16, D = 64,
# every generator family, the permutation, partial blocks, empty rows and columns)
DKV_T_SANITIZE=(--backend triton --cases causal_b64,local_b32,strided_b16,fixed_b32,st_mix_b32,token_mask_b32,merged_strided_b16
    --config '{"dkv_transposed": true, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32, "DKV_BLOCK_M": 128}'
    --config '{"dkv_transposed": true, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32}'
    --config '{"dkv_transposed": true, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 16}')
job_memcheck_dkv_t() {
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    step 150 warm_dkv_t python3 scripts/gpu_sanitize.py "${DKV_T_SANITIZE[@]}"
    step 300 memcheck_dkv_t compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
        python3 scripts/gpu_sanitize.py "${DKV_T_SANITIZE[@]}"
}

# session 8: memcheck after the forward's unscaled row max and the dQ kernel's LSE_BWD store:
# the default configs and 32-key dK/dV tiles (transposed by default in 16-bit) over every
# generator family, the permutation, partial blocks, empty rows and columns (bf16, D = 64)
MEMCHECK8=(--backend triton --cases causal_b64,local_b32,strided_b16,fixed_b32,st_mix_b32,token_mask_b32,merged_strided_b16
    --config null --config '{"BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32}')
job_memcheck8() {
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    step 150 warm8 python3 scripts/gpu_sanitize.py "${MEMCHECK8[@]}"
    step 300 memcheck8 compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
        python3 scripts/gpu_sanitize.py "${MEMCHECK8[@]}"
}

job_wgmma_probe() {  # issue 4: do the wgmma descriptor / fragment conventions hold (kernels/cupy/NOTES.md)
    step 120 wgmma_probe python3 scripts/gpu_wgmma_probe.py --out "$1/wgmma_probe.jsonl"
}

# issue 4: the wgmma forward end to end: the probe of its conventions, its GPU tests against
# dense, memcheck and racecheck over it (the layout cases at blocks 64 / 128 it takes)
# (cases, config) pairs: BLOCK_M 64 over partial blocks and the permutation, 128 at block 128
WGMMA_SANITIZE=("causal_b128,token_mask_b64,st_mix_b64" '{"kernel": "wgmma"}'
    "causal_b128" '{"kernel": "wgmma", "BLOCK_M": 128}')
job_wgmma_check() {
    [[ -n ${WGMMA_NO_PROBE:-} ]] || job_wgmma_probe "$@"
    step 200 pytest_wgmma python3 -m pytest -v -rf -m gpu tests/kernels/test_cupy_backend.py -k wgmma
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    local i
    for ((i = 0; i < ${#WGMMA_SANITIZE[@]}; i += 2)); do
        local args=(--cases "${WGMMA_SANITIZE[i]}" --config "${WGMMA_SANITIZE[i + 1]}")
        step 60 warm_wgmma_$i python3 scripts/gpu_sanitize.py --backend cupy "${args[@]}"
        for tool in memcheck racecheck; do
            step 120 ${tool}_wgmma_$i compute-sanitizer --tool $tool --error-exitcode 9 \
                --print-limit 20 python3 scripts/gpu_sanitize.py --backend cupy "${args[@]}"
        done
    done
}
FWDVAR_WGMMA_CONFIGS=(
    '{"kernel": "wgmma"}'
    '{"kernel": "wgmma", "BLOCK_M": 128}'
    '{"kernel": "mma", "BLOCK_M": 128, "BLOCK_N": 64, "WARP_M": 32}'
)
job_fwdvar_wgmma() {  # the wgmma forward against the mma.sync tiles, the Triton default the peer
    FWDVAR_SET=FWDVAR_WGMMA_CONFIGS FWDVAR_BACKEND=cupy FWDVAR_PEERS=triton \
        FWDVAR_LAYOUTS=${WGMMA_LAYOUTS:-causal fixed local} FWDVAR_NS=${WGMMA_NS:-65536 16384} \
        job_fwdvariants "$@"
}

# issue 4: Nsight Compute over the CuPy forward configs CUPY_PROFILE_CONFIGS (causal N = 16384)
CUPY_PROFILE_CONFIGS=('{"kernel": "wgmma"}' '{"kernel": "wgmma", "BLOCK_M": 128}'
    '{"kernel": "mma", "BLOCK_M": 128, "BLOCK_N": 64, "WARP_M": 32}')
job_profile_cupy_fwd() {
    local ncu i=0 cfg
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    for cfg in "${CUPY_PROFILE_CONFIGS[@]}"; do
        i=$((i + 1))
        step 120 ncu_cupy_fwd_$i "$ncu" --clock-control none --profile-from-start off \
            --section SpeedOfLight --section Occupancy --section LaunchStats \
            --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
            --section WarpStateStats --section SchedulerStats -f -o "$1/cupy_fwd_$i" \
            python3 scripts/gpu_profile.py --backend cupy --layout causal --n 16384 --config "$cfg"
        "$ncu" --import "$1/cupy_fwd_$i.ncu-rep" --csv --page raw >"$1/cupy_fwd_$i.raw.csv" 2>&1
        "$ncu" --import "$1/cupy_fwd_$i.ncu-rep" --csv --page details >"$1/cupy_fwd_$i.details.csv" 2>&1
    done
}
# where a sparse call's time goes (host_ms / device_ms of scripts/gpu_fwd_variants.py), CuPy at
# its default and session 5's most frequent sparse pick, Triton at its default the peer
FWDVAR_HOST_CONFIGS=(null '{"kernel": "mma", "BLOCK_M": 32, "BLOCK_N": 32, "WARP_M": 16}')
job_hostsplit() {
    FWDVAR_SET=FWDVAR_HOST_CONFIGS FWDVAR_BACKEND=cupy FWDVAR_PEERS=triton FWDVAR_CAP=120 \
        FWDVAR_LAYOUTS="st_mix strided local" FWDVAR_NS="65536 4096" FWDVAR_MODE=${HOST_MODE:-fwd+bwd} \
        job_fwdvariants "$@"
}
job_hostsplit_fwd() { HOST_MODE=fwd job_hostsplit "$@"; }
job_dlpack_cost() { step 60 dlpack python3 scripts/gpu_dlpack_cost.py --out "$1/dlpack_cost.jsonl"; }

job_gputests() {  # every GPU-marked test (pytest-xdist carried as wheels in .carry/wheels)
    python3 -m pip install -q --no-deps --no-index .carry/wheels/*.whl 2>&1 | tail -2
    # -v: a line per test as it ends (a killed run still names its failures); faulthandler
    # dumps every thread's stack when one test runs past 120 s
    step ${GPUTESTS_CAP:-450} pytest_gpu python3 -m pytest -v -rf -m gpu -n 8 \
        -o faulthandler_timeout=120 ${GPUTESTS_K:+-k "$GPUTESTS_K"} ${GPUTESTS_PATHS:-tests}
}
job_cupytests() {  # the CuPy backend's GPU tests alone
    GPUTESTS_CAP=280 GPUTESTS_PATHS=tests/kernels/test_cupy_backend.py job_gputests "$@"
}
job_triton_new_tests() {  # session 7's transposed dK/dV and the paper / split-union cases beside it
    GPUTESTS_CAP=${NEWTESTS_CAP:-240} GPUTESTS_PATHS=tests/kernels/test_triton_gpu.py \
        GPUTESTS_K="dkv_transposed or paper or split_union or layouts_dtypes" job_gputests "$@"
}
job_tritontests() {  # every Triton GPU test, and the timing helpers' (session 7's final check)
    GPUTESTS_CAP=${TRITONTESTS_CAP:-240} \
        GPUTESTS_PATHS="tests/kernels/test_triton_gpu.py tests/stbench/test_timing.py" job_gputests "$@"
}
job_othertests() {  # every other GPU test
    GPUTESTS_CAP=300 GPUTESTS_PATHS="tests --ignore=tests/kernels/test_cupy_backend.py" \
        job_gputests "$@"
}


i=0
declare -A ON_GPU
for arg in "$@"; do
    g=$((i % NGPU))
    ON_GPU[$g]="${ON_GPU[$g]:-} ${arg//+/ }"
    i=$((i + 1))
done
echo "GPUs: $NGPU; jobs by GPU:"; for g in "${!ON_GPU[@]}"; do echo "  $g:${ON_GPU[$g]}"; done
nvidia-smi -L
for g in "${!ON_GPU[@]}"; do
    (
        export CUDA_VISIBLE_DEVICES=$g
        for job in ${ON_GPU[$g]}; do
            mkdir -p "$OUT/$job"
            { echo "job $job on GPU $g of $NGPU (other jobs run on the other GPUs)"; job_$job "$OUT/$job"; } \
                >"$OUT/$job/log" 2>&1
        done
    ) &
done
wait
cd "$OUT" && for job in $(echo "$@" | tr "+" " "); do
    tar czf "$job.tgz" --exclude='*.pt' "$job" && rm -rf "$job"  # checkpoints: too big to return
    echo "--- $job"; tar xzOf "$job.tgz" "$job/log" | grep -E "^===|^SKIP|rc=|passed|failed|speedup|ERROR|Error" | tail -25
done
