// SPDX-License-Identifier: BSL-1.0
#include "cli/args.hpp"

namespace qed::cli {

bool parsed_args::has(std::string_view name) const {
    for (const auto& o : options)
        if (o.name == name) return true;
    return false;
}

std::optional<std::string> parsed_args::last(std::string_view name) const {
    std::optional<std::string> v;
    for (const auto& o : options)
        if (o.name == name) v = o.value;
    return v;
}

std::vector<std::string> parsed_args::all(std::string_view name) const {
    std::vector<std::string> v;
    for (const auto& o : options)
        if (o.name == name) v.push_back(o.value);
    return v;
}

namespace {

const option_spec* find_short(const std::vector<option_spec>& spec, char c) {
    for (const auto& s : spec)
        if (s.short_name == c) return &s;
    return nullptr;
}

// An unambiguous prefix of a long option is accepted, as getopt_long does.
const option_spec* find_long(const std::vector<option_spec>& spec, std::string_view name, bool& ambiguous) {
    const option_spec* found = nullptr;
    ambiguous = false;
    for (const auto& s : spec) {
        if (s.long_name.empty()) continue;
        if (s.long_name == name) return &s;
        if (s.long_name.substr(0, name.size()) == name) {
            if (found) ambiguous = true;
            found = &s;
        }
    }
    return ambiguous ? nullptr : found;
}

std::string key_of(const option_spec& s) {
    return s.long_name.empty() ? std::string(1, s.short_name) : std::string(s.long_name);
}

}  // namespace

std::optional<parsed_args> parse_args(const std::vector<std::string>& words, const std::vector<option_spec>& spec,
                                      std::string& error) {
    parsed_args out;
    for (std::size_t i = 0; i < words.size(); ++i) {
        const std::string& w = words[i];
        if (w == "--") {
            for (++i; i < words.size(); ++i) out.positional.push_back(words[i]);
            break;
        }
        if (w.size() > 2 && w.compare(0, 2, "--") == 0) {
            const auto eq = w.find('=');
            const std::string name = w.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
            bool ambiguous = false;
            const option_spec* s = find_long(spec, name, ambiguous);
            if (!s) {
                error = ambiguous ? "option '--" + name + "' is ambiguous" : "unrecognized option '--" + name + "'";
                return std::nullopt;
            }
            parsed_option o{key_of(*s), {}};
            if (s->takes_value) {
                if (eq != std::string::npos) {
                    o.value = w.substr(eq + 1);
                } else if (i + 1 < words.size()) {
                    o.value = words[++i];
                } else {
                    error = "option '--" + std::string(s->long_name) + "' requires an argument";
                    return std::nullopt;
                }
            } else if (eq != std::string::npos) {
                error = "option '--" + std::string(s->long_name) + "' doesn't allow an argument";
                return std::nullopt;
            }
            out.options.push_back(std::move(o));
            continue;
        }
        if (w.size() > 1 && w[0] == '-') {
            for (std::size_t k = 1; k < w.size(); ++k) {
                const option_spec* s = find_short(spec, w[k]);
                if (!s) {
                    error = std::string("invalid option -- '") + w[k] + "'";
                    return std::nullopt;
                }
                parsed_option o{key_of(*s), {}};
                if (s->takes_value) {
                    if (k + 1 < w.size()) {
                        o.value = w.substr(k + 1);
                    } else if (i + 1 < words.size()) {
                        o.value = words[++i];
                    } else {
                        error = std::string("option requires an argument -- '") + w[k] + "'";
                        return std::nullopt;
                    }
                    out.options.push_back(std::move(o));
                    break;
                }
                out.options.push_back(std::move(o));
            }
            continue;
        }
        out.positional.push_back(w);
    }
    return out;
}

}  // namespace qed::cli
