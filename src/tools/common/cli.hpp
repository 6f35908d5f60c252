// SPDX-License-Identifier: BSL-1.0
// The command-line parser the three programs share (src/cli/), under the
// names the tools use.
#pragma once

#include "cli/args.hpp"
#include "cli/size_arg.hpp"

namespace qed::tools {

using cli::max_size_argument;
using cli::option_spec;
using cli::parse_args;
using cli::parse_size;
using cli::parsed_args;
using cli::parsed_option;

}  // namespace qed::tools
