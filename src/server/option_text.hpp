// SPDX-License-Identifier: BSL-1.0
// QEMU-style option strings ("type,key=value,key=value"), shared by
// --object and --export.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qed::nbd {

/// Split on single commas; ",," stands for a literal comma (QEMU's rule).
std::vector<std::string> split_options(std::string_view s);

/// on/yes/true and off/no/false; nullopt for anything else.
std::optional<bool> parse_bool(const std::string& v);

}  // namespace qed::nbd
