# SPDX-License-Identifier: BSL-1.0
# Warnings for the project's own targets (not for dependencies).
add_library(qed_warnings INTERFACE)
target_compile_options(qed_warnings INTERFACE -Wall -Wextra -Wpedantic -Wshadow=local -Wnon-virtual-dtor
                                              -Wold-style-cast -Wcast-align)
# GCC 12 at -O2 reports false positives inside Boost headers when it inlines
# them into our code: Boost.Container's small_vector copy
# (-Wstringop-overread "reading between 65 and 9223372036854775792 bytes")
# and Asio's coroutine frame allocator (-Wmismatched-new-delete). Both are
# known GCC 12 issues; they are silenced for GCC 12 only.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  target_compile_options(qed_warnings INTERFACE -Wno-stringop-overread -Wno-mismatched-new-delete)
endif()
