// SPDX-License-Identifier: BSL-1.0
// The qed-img commands. Each takes the words after its name and returns
// the process exit status; main.cpp holds the table that dispatches them.
#pragma once

#include <string>
#include <vector>

namespace qed::tools::img {

using words = std::vector<std::string>;

int run_create(const words& args);
int run_info(const words& args);
int run_check(const words& args);
int run_map(const words& args);
int run_measure(const words& args);
int run_convert(const words& args);
int run_commit(const words& args);
int run_rebase(const words& args);
int run_resize(const words& args);
int run_compare(const words& args);
int run_dd(const words& args);
int run_bench(const words& args);

}  // namespace qed::tools::img
