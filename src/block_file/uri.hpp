// SPDX-License-Identifier: BSL-1.0
// What the remote block files share about the URIs that name them.
#pragma once

#include <cctype>
#include <string>
#include <string_view>

namespace qed::detail {

/// `s` with its %XX escapes decoded (a '%' without two hex digits after it
/// stays as it is), as QEMU's URI parser decodes paths and queries.
inline std::string percent_decoded(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
            std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
            out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

}  // namespace qed::detail
