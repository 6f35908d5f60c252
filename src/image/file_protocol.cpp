// SPDX-License-Identifier: BSL-1.0
#include "image/file_protocol.hpp"

namespace qed::detail {

std::string without_file_protocol(const std::string& name) {
    constexpr std::string_view prefix = "file:";
    if (name.compare(0, prefix.size(), prefix) != 0) return name;
    std::string rest = name.substr(prefix.size());
    if (rest.empty() || rest.front() == '/') return rest;
    const auto colon = rest.find(':');
    if (colon != std::string::npos && colon < rest.find('/')) rest.insert(0, "./");
    return rest;
}

}  // namespace qed::detail
