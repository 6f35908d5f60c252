// SPDX-License-Identifier: BSL-1.0
// Size arguments as qemu-img, qemu-io and qemu-nbd read them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace qed::cli {

/// Largest size a size argument may give (QEMU's limit: INT64_MAX).
inline constexpr std::uint64_t max_size_argument = 0x7fff'ffff'ffff'ffffULL;

/// Parse a size: a decimal number (a fraction is allowed with a suffix),
/// or 0x-prefixed hex, with an optional suffix b/B (bytes), k/K, M, G, T, P, E
/// (powers of 1024). Leading blanks and a leading '+' are accepted.
/// On failure returns nullopt and sets `error` to a short reason.
std::optional<std::uint64_t> parse_size(std::string_view text, std::string& error);

}  // namespace qed::cli
