// SPDX-License-Identifier: BSL-1.0
#include "qed_img/options.hpp"

#include "common/driver.hpp"
#include "common/sizes.hpp"

namespace qed::tools::img {

int fail(std::string_view line) {
    report(line);
    return 1;
}

std::optional<parsed_args> parse(std::string_view command, const std::vector<std::string>& words,
                                 const std::vector<option_spec>& spec) {
    std::string error;
    auto args = parse_args(words, spec, error);
    if (!args) fail(std::string(command) + ": " + error + " (see 'qed-img --help')");
    return args;
}

bool format_value(const std::optional<std::string>& value, std::optional<image_format>& out) {
    out.reset();
    if (!value) return true;
    out = parse_format(*value);
    if (!out) {
        fail("Unknown file format '" + *value + "' (qed-img supports qed and raw)");
        return false;
    }
    return true;
}

bool output_value(const parsed_args& args, bool& json) {
    json = false;
    const auto v = args.last("output");
    if (!v || *v == "human") return true;
    if (*v == "json") {
        json = true;
        return true;
    }
    fail("--output must be used with human or json as argument (got '" + *v + "')");
    return false;
}

bool cache_value(const std::optional<std::string>& value, bool& direct) {
    direct = false;
    if (!value) return true;
    if (*value == "none" || *value == "directsync") {
        direct = true;
        return true;
    }
    if (*value == "writeback" || *value == "writethrough" || *value == "unsafe") return true;
    fail("Invalid cache option: '" + *value + "' (none, writeback, writethrough, directsync or unsafe)");
    return false;
}

std::optional<std::vector<std::pair<std::string, std::string>>> option_list(const std::vector<std::string>& values) {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& v : values) {
        std::vector<std::string> items(1);
        for (std::size_t i = 0; i < v.size(); ++i) {
            if (v[i] == ',' && i + 1 < v.size() && v[i + 1] == ',') {
                items.back() += ',';
                ++i;
            } else if (v[i] == ',') {
                items.emplace_back();
            } else {
                items.back() += v[i];
            }
        }
        for (const auto& item : items) {
            if (item.empty()) continue;
            if (item == "help" || item == "?") {
                out.emplace_back("help", "");
                continue;
            }
            const auto eq = item.find('=');
            if (eq == std::string::npos) {
                fail("Invalid option list entry '" + item + "': expected name=value");
                return std::nullopt;
            }
            out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
        }
    }
    return out;
}

std::optional<std::uint64_t> size_value(std::string_view what, const std::string& text) {
    std::string why;
    auto v = parse_size(text, why);
    if (!v)
        fail(std::string(what) + ": invalid size '" + text + "': " + why + " (sizes take k, M, G, T, P or E suffixes)");
    return v;
}

bool positional_count(std::string_view command, const parsed_args& args, std::size_t min, std::size_t max) {
    const std::size_t n = args.positional.size();
    if (n < min) {
        fail(std::string(command) + ": not enough arguments (see 'qed-img --help')");
        return false;
    }
    if (n > max) {
        fail(std::string(command) + ": unexpected argument '" + args.positional[max] + "' (see 'qed-img --help')");
        return false;
    }
    return true;
}

}  // namespace qed::tools::img
