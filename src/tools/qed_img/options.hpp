// SPDX-License-Identifier: BSL-1.0
// Option handling shared by the qed-img commands: parsing with one-line
// errors, format names, --output, cache modes and -o option lists.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/cli.hpp"
#include "qed/image.hpp"

namespace qed::tools::img {

/// Print "qed-img: <line>" on standard error; returns 1 (the usual exit status).
int fail(std::string_view line);

/// Parse a command's words. On a bad option prints one line naming the
/// command and the problem and returns nullopt.
std::optional<parsed_args> parse(std::string_view command, const std::vector<std::string>& words,
                                 const std::vector<option_spec>& spec);

/// Turn a format option's value into a format (nullopt in `out` when the
/// option was not given). False, after printing why, for an unknown name.
bool format_value(const std::optional<std::string>& value, std::optional<image_format>& out);

/// --output=human|json. False, after printing why, for anything else.
bool output_value(const parsed_args& args, bool& json);

/// A cache mode (-t/-T): none and directsync bypass the host page cache.
bool cache_value(const std::optional<std::string>& value, bool& direct);

/// "-o a=1,b=2" (repeatable; ",," is a literal comma). "help" and "?" give
/// a pair with an empty value and key "help".
std::optional<std::vector<std::pair<std::string, std::string>>> option_list(const std::vector<std::string>& values);

/// Parse a size argument; prints "<what>: invalid size '<text>': <why>" on error.
std::optional<std::uint64_t> size_value(std::string_view what, const std::string& text);

/// Exactly `n` positional words, or print what is wrong.
bool positional_count(std::string_view command, const parsed_args& args, std::size_t min, std::size_t max);

}  // namespace qed::tools::img
