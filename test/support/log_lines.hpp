// SPDX-License-Identifier: BSL-1.0
// The lines a test collects from open_options::log, and questions about them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace qed::test {

struct log_lines : std::vector<std::string> {
    /// A sink for open_options::log that appends here.
    auto sink() {
        return [this](std::string_view l) { emplace_back(l); };
    }
    /// Some line mentions `word`.
    bool mentions(const std::string& word) const {
        for (const auto& l : *this)
            if (l.find(word) != std::string::npos) return true;
        return false;
    }
    /// All lines, indented, for a failure message.
    std::string all() const {
        std::string s;
        for (const auto& l : *this) s += "\n    " + l;
        return s;
    }
};

}  // namespace qed::test
