#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Build and run test/consumer against the installed package and through
# add_subdirectory. Usage: test/consumer/run.sh BUILD_DIR (the main build,
# already built). Everything else goes to a temporary directory.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:?usage: run.sh BUILD_DIR}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
jobs=$(nproc)

echo "== installed package: cmake --install + find_package(qed)"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$src/test/consumer" -B "$work/installed" -DCMAKE_PREFIX_PATH="$work/prefix" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_CXX_COMPILER_LAUNCHER:+-DCMAKE_CXX_COMPILER_LAUNCHER=$CMAKE_CXX_COMPILER_LAUNCHER} >/dev/null
cmake --build "$work/installed" -j"$jobs" >/dev/null
(cd "$work" && "$work/installed/consumer")

echo "== source tree: add_subdirectory(qed)"
cmake -S "$src/test/consumer" -B "$work/subdir" -DQED_SOURCE_DIR="$src" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_CXX_COMPILER_LAUNCHER:+-DCMAKE_CXX_COMPILER_LAUNCHER=$CMAKE_CXX_COMPILER_LAUNCHER} >/dev/null
cmake --build "$work/subdir" -j"$jobs" --target consumer >/dev/null
(cd "$work" && "$work/subdir/consumer")
