// SPDX-License-Identifier: BSL-1.0
// json: names and dotted option lists (qed/node_options.hpp). Boost.JSON
// is compiled into the library here, its only translation unit.
#include "qed/node_options.hpp"

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

// Keys of `options` are sorted, so the members of one object are adjacent.
void emit(const node_options& options, node_options::const_iterator begin, node_options::const_iterator end,
          std::size_t prefix_len, std::string& out) {
    out += '{';
    bool first = true;
    for (auto it = begin; it != end;) {
        const std::string& key = it->first;
        const auto dot = key.find('.', prefix_len);
        const std::string name =
            key.substr(prefix_len, dot == std::string::npos ? std::string::npos : dot - prefix_len);
        if (!first) out += ", ";
        first = false;
        quote(out, name);
        out += ": ";
        if (dot == std::string::npos) {
            quote(out, it->second);
            ++it;
            continue;
        }
        const std::string child = key.substr(0, dot + 1);
        auto stop = it;
        while (stop != end && stop->first.compare(0, child.size(), child) == 0) ++stop;
        emit(options, it, stop, child.size(), out);
        it = stop;
    }
    out += '}';
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
    emit(options, options.begin(), options.end(), 0, out);
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
