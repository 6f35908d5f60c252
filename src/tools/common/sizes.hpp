// SPDX-License-Identifier: BSL-1.0
// Sizes as qemu-img and qemu-io read and print them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace qed::tools {

/// Largest size a size argument may give (QEMU's limit: INT64_MAX).
inline constexpr std::uint64_t max_size_argument = 0x7fff'ffff'ffff'ffffULL;

/// Parse a size: a decimal number (a fraction is allowed with a suffix),
/// or 0x-prefixed hex, with an optional suffix b/B (bytes), k/K, M, G, T, P, E
/// (powers of 1024). Leading blanks and a leading '+' are accepted.
/// On failure returns nullopt and sets `error` to a short reason.
std::optional<std::uint64_t> parse_size(std::string_view text, std::string& error);

/// qemu-io's way of printing a quantity: "64 KiB", "3.812 MiB", "0 bytes".
std::string io_size_string(double value);

/// qemu-img's way of printing a size: "260 KiB", "1.25 MiB", "0 B".
std::string img_size_string(std::uint64_t value);

}  // namespace qed::tools
