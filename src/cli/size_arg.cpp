// SPDX-License-Identifier: BSL-1.0
#include "cli/size_arg.hpp"

#include <cmath>
#include <cstdint>

namespace qed::cli {
namespace {

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/// Multiplier of a size suffix, 0 when `c` is not one.
std::uint64_t suffix_multiplier(char c) {
    switch (c) {
        case 'b':
        case 'B':
            return 1;
        case 'k':
        case 'K':
            return std::uint64_t{1} << 10;
        case 'm':
        case 'M':
            return std::uint64_t{1} << 20;
        case 'g':
        case 'G':
            return std::uint64_t{1} << 30;
        case 't':
        case 'T':
            return std::uint64_t{1} << 40;
        case 'p':
        case 'P':
            return std::uint64_t{1} << 50;
        case 'e':
        case 'E':
            return std::uint64_t{1} << 60;
        default:
            return 0;
    }
}

}  // namespace

std::optional<std::uint64_t> parse_size(std::string_view s, std::string& error) {
    std::size_t i = 0;
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    if (i < s.size() && s[i] == '+') ++i;
    const std::size_t start = i;
    std::uint64_t whole = 0;
    bool overflow = false;
    bool hex = false;
    if (s.size() - i > 2 && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X') && hex_digit(s[i + 2]) >= 0) {
        hex = true;
        for (i += 2; i < s.size() && hex_digit(s[i]) >= 0; ++i) {
            if (whole > (UINT64_MAX >> 4)) overflow = true;
            whole = (whole << 4) | static_cast<std::uint64_t>(hex_digit(s[i]));
        }
    } else {
        for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
            const std::uint64_t d = static_cast<std::uint64_t>(s[i] - '0');
            if (whole > (UINT64_MAX - d) / 10) overflow = true;
            whole = whole * 10 + d;
        }
    }
    if (i == start) {
        error = "not a number";
        return std::nullopt;
    }
    std::string fraction;
    if (!hex && i < s.size() && s[i] == '.') {
        for (++i; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) fraction += s[i];
    }
    std::uint64_t mult = 1;
    bool has_suffix = false;
    if (i < s.size() && suffix_multiplier(s[i])) {
        mult = suffix_multiplier(s[i]);
        has_suffix = true;
        ++i;
    }
    if (i != s.size()) {
        error = "unexpected characters after the number";
        return std::nullopt;
    }
    const bool fraction_nonzero = fraction.find_first_not_of('0') != std::string::npos;
    if (fraction_nonzero && (!has_suffix || mult == 1)) {
        error = "a fraction needs a k, M, G, T, P or E suffix";
        return std::nullopt;
    }
    if (overflow || (mult > 1 && whole > max_size_argument / mult)) {
        error = "too large (the maximum is 2^63 - 1 bytes)";
        return std::nullopt;
    }
    std::uint64_t value = whole * mult;
    if (fraction_nonzero) {
        const long double f = std::strtold(("0." + fraction).c_str(), nullptr);
        value += static_cast<std::uint64_t>(std::llroundl(f * static_cast<long double>(mult)));
    }
    if (value > max_size_argument) {
        error = "too large (the maximum is 2^63 - 1 bytes)";
        return std::nullopt;
    }
    return value;
}

}  // namespace qed::cli
