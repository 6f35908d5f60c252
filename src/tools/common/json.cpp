// SPDX-License-Identifier: BSL-1.0
#include "common/json.hpp"

#include <cstdio>

namespace qed::tools {

json& json::set(std::string key, json value) {
    members_.emplace_back(std::move(key), std::move(value));
    return *this;
}

json& json::push(json value) {
    elements_.push_back(std::move(value));
    return *this;
}

std::string json_quote(const std::string& s) {
    std::string out = "\"";
    for (const char c : s) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            case '\b':
                out += "\\b";
                break;
            case '\f':
                out += "\\f";
                break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
                    out += buf;
                } else {
                    out += c;
                }
        }
    }
    out += '"';
    return out;
}

std::string json::dump() const {
    std::string out;
    dump_to(out, 0);
    return out;
}

void json::dump_to(std::string& out, int depth) const {
    const std::string pad(static_cast<std::size_t>(depth + 1) * 4, ' ');
    const std::string close_pad(static_cast<std::size_t>(depth) * 4, ' ');
    switch (kind_) {
        case kind::null:
            out += "null";
            return;
        case kind::boolean:
            out += bool_ ? "true" : "false";
            return;
        case kind::number:
            out += std::to_string(number_);
            return;
        case kind::string:
            out += json_quote(text_);
            return;
        case kind::object:
            if (members_.empty()) {
                out += "{}";
                return;
            }
            out += "{\n";
            for (std::size_t i = 0; i < members_.size(); ++i) {
                out += pad + json_quote(members_[i].first) + ": ";
                members_[i].second.dump_to(out, depth + 1);
                out += i + 1 < members_.size() ? ",\n" : "\n";
            }
            out += close_pad + "}";
            return;
        case kind::array:
            if (elements_.empty()) {
                out += "[]";
                return;
            }
            out += "[\n";
            for (std::size_t i = 0; i < elements_.size(); ++i) {
                out += pad;
                elements_[i].dump_to(out, depth + 1);
                out += i + 1 < elements_.size() ? ",\n" : "\n";
            }
            out += close_pad + "]";
            return;
    }
}

}  // namespace qed::tools
