// SPDX-License-Identifier: BSL-1.0
// A small JSON value for the tools' --output=json, printed the way QEMU
// prints it (four-space indentation, keys in insertion order).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qed::tools {

class json {
public:
    enum class kind { null, boolean, number, string, object, array };

    json() = default;
    json(bool b) : kind_(kind::boolean), bool_(b) {}                   // NOLINT: implicit on purpose
    json(std::uint64_t n) : kind_(kind::number), number_(n) {}         // NOLINT
    json(unsigned n) : kind_(kind::number), number_(n) {}              // NOLINT
    json(std::string s) : kind_(kind::string), text_(std::move(s)) {}  // NOLINT
    json(const char* s) : kind_(kind::string), text_(s) {}             // NOLINT

    static json object() { return json(kind::object); }
    static json array() { return json(kind::array); }

    /// Add a member (objects keep the order members were added in).
    json& set(std::string key, json value);
    /// Append an element to an array.
    json& push(json value);
    bool empty() const { return members_.empty() && elements_.empty(); }

    /// Pretty-printed as QEMU does; no trailing newline.
    std::string dump() const;

private:
    explicit json(kind k) : kind_(k) {}
    void dump_to(std::string& out, int depth) const;

    kind kind_ = kind::null;
    bool bool_ = false;
    std::uint64_t number_ = 0;
    std::string text_;
    std::vector<std::pair<std::string, json>> members_;
    std::vector<json> elements_;
};

/// A JSON string literal (with quotes) for `s`.
std::string json_quote(const std::string& s);

}  // namespace qed::tools
