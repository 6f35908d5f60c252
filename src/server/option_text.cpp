// SPDX-License-Identifier: BSL-1.0
#include "server/option_text.hpp"

namespace qed::nbd {

std::vector<std::string> split_options(std::string_view s) {
    std::vector<std::string> parts(1);
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == ',') {
            if (i + 1 < s.size() && s[i + 1] == ',') {
                parts.back() += ',';
                ++i;
            } else {
                parts.emplace_back();
            }
        } else {
            parts.back() += s[i];
        }
    }
    return parts;
}

std::optional<bool> parse_bool(const std::string& v) {
    if (v == "on" || v == "yes" || v == "true") return true;
    if (v == "off" || v == "no" || v == "false") return false;
    return std::nullopt;
}

}  // namespace qed::nbd
