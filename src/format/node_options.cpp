// SPDX-License-Identifier: BSL-1.0
// json: names and dotted option lists (qed/node_options.hpp). Boost.JSON
// is compiled into the library here, its only translation unit.
#include "qed/node_options.hpp"

#include <algorithm>
#include <boost/json/src.hpp>
#include <vector>

namespace qed {
namespace {

constexpr std::string_view json_prefix = "json:";

/// QEMU's JSON accepts strings in single quotes; Boost.JSON doesn't. Rewrite
/// them as double-quoted strings (a '"' inside becomes \", \' becomes ');
/// everything outside strings, and double-quoted strings, are copied.
bool requote(std::string_view in, std::string& out, std::string& error) {
    out.clear();
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c != '\'' && c != '"') {
            out += c;
            continue;
        }
        out += '"';
        std::size_t j = i + 1;
        for (; j < in.size() && in[j] != c; ++j) {
            if (in[j] == '\\' && j + 1 < in.size()) {
                if (in[j + 1] == '\'') {
                    out += '\'';
                } else {
                    out += '\\';
                    out += in[j + 1];
                }
                ++j;
            } else if (in[j] == '"') {
                out += "\\\"";
            } else {
                out += in[j];
            }
        }
        if (j >= in.size()) {
            error = "JSON parse error, missing closing quote";
            return false;
        }
        out += '"';
        i = j;
    }
    return true;
}

bool flatten(const boost::json::value& v, const std::string& key, node_options& out, std::string& error) {
    auto put = [&](std::string text) {
        if (!out.emplace(key, std::move(text)).second) {
            error = "Duplicate option '" + key + "'";
            return false;
        }
        return true;
    };
    switch (v.kind()) {
        case boost::json::kind::object:
            for (const auto& m : v.get_object()) {
                const std::string k(m.key());
                if (!flatten(m.value(), key.empty() ? k : key + "." + k, out, error)) return false;
            }
            return true;
        case boost::json::kind::array: {
            std::size_t n = 0;
            for (const auto& e : v.get_array())
                if (!flatten(e, key + "." + std::to_string(n++), out, error)) return false;
            return true;
        }
        case boost::json::kind::string:
            return put(std::string(v.get_string()));
        case boost::json::kind::bool_:
            return put(v.get_bool() ? "on" : "off");
        case boost::json::kind::null:
            return put("");
        default:
            return put(boost::json::serialize(v));
    }
}

void quote(std::string& out, const std::string& s) {
    out += boost::json::serialize(boost::json::value(s));
}

/// A member name that is a list index: digits, no leading zero (but "0").
bool is_index(std::string_view name) {
    if (name.empty() || name.size() > 9 || name.find_first_not_of("0123456789") != std::string_view::npos) return false;
    return name.size() == 1 || name[0] != '0';
}

struct member {
    std::string name;
    node_options::const_iterator begin, end;  ///< the keys below it (one key: a value)
    std::size_t child_prefix = 0;             ///< length of "name." in those keys; 0 for a value
};

// Keys of `options` are sorted, so the members of one object are adjacent.
// An object whose members are exactly 0..n-1 is written as a list (QEMU's
// flattening makes "children.0" of a list's first element), in index order.
void emit(node_options::const_iterator begin, node_options::const_iterator end, std::size_t prefix_len,
          std::string& out, bool top = false) {
    std::vector<member> members;
    for (auto it = begin; it != end;) {
        const std::string& key = it->first;
        const auto dot = key.find('.', prefix_len);
        member m;
        m.name = key.substr(prefix_len, dot == std::string::npos ? std::string::npos : dot - prefix_len);
        m.begin = it;
        if (dot == std::string::npos) {
            m.end = ++it;
        } else {
            const std::string child = key.substr(0, dot + 1);
            while (it != end && it->first.compare(0, child.size(), child) == 0) ++it;
            m.end = it;
            m.child_prefix = child.size();
        }
        members.push_back(std::move(m));
    }
    bool list = !top && !members.empty();  // a json: name is an object
    for (const auto& m : members) list = list && is_index(m.name);
    if (list) {
        std::sort(members.begin(), members.end(),
                  [](const member& a, const member& b) { return std::stoul(a.name) < std::stoul(b.name); });
        for (std::size_t i = 0; i < members.size() && list; ++i) list = std::stoul(members[i].name) == i;
        if (!list)
            std::sort(members.begin(), members.end(), [](const member& a, const member& b) { return a.name < b.name; });
    }
    out += list ? '[' : '{';
    bool first = true;
    for (const auto& m : members) {
        if (!first) out += ", ";
        first = false;
        if (!list) {
            quote(out, m.name);
            out += ": ";
        }
        if (m.child_prefix == 0)
            quote(out, m.begin->second);
        else
            emit(m.begin, m.end, m.child_prefix, out);
    }
    out += list ? ']' : '}';
}

}  // namespace

bool is_json_name(std::string_view name) noexcept {
    return name.substr(0, json_prefix.size()) == json_prefix;
}

std::optional<node_options> parse_json_options(std::string_view name, std::string& error) {
    if (is_json_name(name)) name.remove_prefix(json_prefix.size());
    std::string text;
    if (!requote(name, text, error)) return std::nullopt;
    boost::system::error_code ec;
    const boost::json::value v = boost::json::parse(text, ec);
    if (ec) {
        error = "Could not parse the JSON options: " + ec.message();
        return std::nullopt;
    }
    if (!v.is_object()) {
        error = "Invalid JSON object given";
        return std::nullopt;
    }
    node_options out;
    if (!flatten(v, "", out, error)) return std::nullopt;
    return out;
}

std::optional<node_options> parse_dotted_options(std::string_view text, std::string& error) {
    node_options out;
    std::vector<std::string> items(1);
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == ',' && i + 1 < text.size() && text[i + 1] == ',') {
            items.back() += ',';
            ++i;
        } else if (text[i] == ',') {
            items.emplace_back();
        } else {
            items.back() += text[i];
        }
    }
    for (const auto& item : items) {
        if (item.empty()) continue;
        const auto eq = item.find('=');
        if (eq == std::string::npos || eq == 0) {
            error = "Invalid parameter '" + item + "': expected key=value";
            return std::nullopt;
        }
        // A later value for the same key wins, as in QEMU's option lists.
        out[item.substr(0, eq)] = item.substr(eq + 1);
    }
    return out;
}

std::string json_name(const node_options& options) {
    std::string out(json_prefix);
    emit(options.begin(), options.end(), 0, out, true);
    return out;
}

node_options sub_options(const node_options& options, std::string_view prefix) {
    node_options out;
    const std::string p = std::string(prefix) + ".";
    for (auto it = options.lower_bound(p); it != options.end() && it->first.compare(0, p.size(), p) == 0; ++it)
        out.emplace(it->first.substr(p.size()), it->second);
    return out;
}

}  // namespace qed
