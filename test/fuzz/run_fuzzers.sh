#!/bin/bash
# SPDX-License-Identifier: BSL-1.0
# Build the libFuzzer harnesses with clang (ASan + UBSan + coverage) and run
# each for a fixed time on a copy of its seed corpus.
#
# Usage: test/fuzz/run_fuzzers.sh [SECONDS]        (default 30 per harness)
#
# Environment:
#   QED_FUZZ_BUILD_DIR  build directory        (default: <repo>/build-fuzz)
#   QED_FUZZ_WORK_DIR   corpora, logs, crashes (default: <build>/fuzz-run)
#   QED_FUZZ_CXX        the clang++ to use     (default: clang++, else clang++-14)
#   QED_FUZZ_JOBS       build parallelism      (default: nproc)
#   QED_FUZZ_TARGETS    harnesses to run       (default: "fuzz_image_open fuzz_requests")
#   QED_FUZZ_MALLOC_LIMIT_MB / QED_FUZZ_RSS_LIMIT_MB   memory limits (default 256 / 512)
#
# Every seed (regression seeds included) runs first, then libFuzzer mutates
# for SECONDS. Prints libFuzzer's final figures (executions, exec/s, cov, ft,
# corpus) per harness. Exits non-zero if any harness crashed, leaked, broke an
# invariant, timed out or ran out of memory; the reproducer is in
# <work>/<harness>/artifacts/ and the log beside it. Replay a reproducer:
#   <build>/test/fuzz/<harness> <file>            (QED_FUZZ_VERBOSE=1 traces it)
set -uo pipefail

secs=${1:-30}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${QED_FUZZ_BUILD_DIR:-$root/build-fuzz}
work=${QED_FUZZ_WORK_DIR:-$build/fuzz-run}
jobs=${QED_FUZZ_JOBS:-$(nproc)}
targets=${QED_FUZZ_TARGETS:-fuzz_image_open fuzz_requests}
cxx=${QED_FUZZ_CXX:-}
if [ -z "$cxx" ]; then
    if command -v clang++ >/dev/null; then cxx=clang++; else cxx=clang++-14; fi
fi

echo "== configuring and building the fuzz harnesses ($cxx) in $build"
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DQED_BUILD_FUZZERS=ON -DQED_BUILD_TESTS=OFF -DQED_BUILD_TOOLS=OFF >"$build/fuzz-configure.log" 2>&1 ||
    { cat "$build/fuzz-configure.log"; echo "run_fuzzers: configure failed"; exit 2; }
# shellcheck disable=SC2086
cmake --build "$build" -j"$jobs" --target $targets || { echo "run_fuzzers: build failed"; exit 2; }

# Per-harness settings: corpus folder and libFuzzer options.
#
# Memory limits (issue 15): any single allocation above -malloc_limit_mb,
# or a process above -rss_limit_mb, is a finding. They are low enough that a
# header making the library allocate what it claims is caught: the 4 KiB
# image whose header claims 65,537 header clusters and a 0xFFFFFF00-byte
# backing name (fuzz_image_open extends the file sparsely to what its header
# claims, so such inputs are reachable) allocated two 4 GiB buffers. Every
# legitimate allocation stays far below 256 MiB: inputs are at most
# -max_len, extended files have tables of at most 4 MiB, reads go in 1 MiB
# chunks, and the L2 cache keeps at most 32 MiB. ASan's quarantine is
# capped at 64 MiB (default 256) so freed memory doesn't count against RSS.
fuzz_malloc_limit_mb=${QED_FUZZ_MALLOC_LIMIT_MB:-256}
fuzz_rss_limit_mb=${QED_FUZZ_RSS_LIMIT_MB:-512}
corpus_of() { case $1 in fuzz_image_open) echo image_open ;; fuzz_requests) echo requests ;; esac; }
options_of() {
    local limits="-rss_limit_mb=$fuzz_rss_limit_mb -malloc_limit_mb=$fuzz_malloc_limit_mb"
    case $1 in
    fuzz_image_open) echo "-max_len=524288 $limits" ;;
    fuzz_requests) echo "-max_len=4096 $limits" ;;
    esac
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1:quarantine_size_mb=64}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=0
summary=""
for t in $targets; do
    dir=$work/$t
    rm -rf "$dir"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    cp -r "$here/corpus/$(corpus_of "$t")/." "$dir/corpus/"
    seeds=$(find "$dir/corpus" -type f | wc -l)
    echo "== $t: $seeds seeds, ${secs}s"
    start=$(date +%s)
    # shellcheck disable=SC2046
    "$build/test/fuzz/$t" $(options_of "$t") -max_total_time="$secs" -timeout=60 -print_final_stats=1 \
        -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$dir/log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    final=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$dir/log" | tail -1)
    [ -n "$final" ] || final=$(grep -E '^#[0-9]+[[:space:]]' "$dir/log" | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$dir/log")
    echo "   ${final:-<no status line>}"
    echo "   executions ${execs:-?}, ${rate:-?} exec/s, peak RSS ${rss:-?} MB, corpus $(find "$dir/corpus" -type f | wc -l) files, ${took}s"
    artifacts=$(find "$dir/artifacts" -type f | head -5)
    if [ $rc -ne 0 ] || [ -n "$artifacts" ]; then
        failed=1
        echo "!! $t FAILED (exit $rc). Reproducer(s):"
        for a in $artifacts; do echo "     $a"; done
        echo "   ---- end of $dir/log ----"
        grep -v '^#[0-9]' "$dir/log" | tail -60
        echo "   ----"
        summary+="$t: FAILED  "
    else
        summary+="$t: ok  "
    fi
done
echo "== fuzz summary: $summary"
exit $failed
