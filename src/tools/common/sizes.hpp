// SPDX-License-Identifier: BSL-1.0
// Sizes as qemu-img and qemu-io print them (cli/size_arg.hpp reads them).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/cli.hpp"

namespace qed::tools {

/// qemu-io's way of printing a quantity: "64 KiB", "3.812 MiB", "0 bytes".
std::string io_size_string(double value);

/// qemu-img's way of printing a size: "260 KiB", "1.25 MiB", "0 B".
std::string img_size_string(std::uint64_t value);

}  // namespace qed::tools
