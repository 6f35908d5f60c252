// SPDX-License-Identifier: BSL-1.0
#include "common/image_opts.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <string_view>

#include "qed/node_options.hpp"
#include "qed/throttle.hpp"

namespace qed::tools {

namespace {

std::vector<std::shared_ptr<throttle_group>> groups;

/// An integer property value as QEMU's QOM takes one: decimal, or 0x hex;
/// negative values allowed (the caller decides). nullopt when malformed.
std::optional<std::int64_t> integer(const std::string& v) {
    if (v.empty()) return std::nullopt;
    errno = 0;
    char* end = nullptr;
    const long long n = std::strtoll(v.c_str(), &end, 0);
    if (errno || end != v.c_str() + v.size()) return std::nullopt;
    return n;
}

/// QEMU's throttle-group object: x-LIMIT properties and the limits.LIMIT
/// struct (iops-total, bps-read-max, iops-total-max-length, iops-size...),
/// checked as a whole as QEMU checks them.
std::shared_ptr<throttle_group> make_group(const node_options& opts, std::string& error) {
    throttle_config config;
    std::string why;
    for (const auto& [k, v] : opts) {
        if (k == "id" || k == "qom-type") continue;
        const bool legacy = k.compare(0, 2, "x-") == 0;
        const bool in_limits = k.compare(0, 7, "limits.") == 0;
        if (k == "limits") {
            error = "Invalid parameter type for 'limits', expected: object";
            return nullptr;
        }
        const std::string name = legacy ? k.substr(2) : in_limits ? k.substr(7) : std::string{};
        if (name.empty() || !throttle_config{}.set(name, 0, why)) {
            error = "Parameter '" + k + "' is unexpected";
            return nullptr;
        }
        const auto n = integer(v);
        if (!n) {
            error = "Parameter '" + k + "' expects integer";
            return nullptr;
        }
        if (legacy && *n < 0) {
            error = "Property values cannot be negative";
            return nullptr;
        }
        // (A negative member of limits is a huge unsigned value, refused below.)
        if (!config.set(name, static_cast<std::uint64_t>(*n), why)) {
            error = why;
            return nullptr;
        }
    }
    auto g = throttle_group::create(opts.at("id"), config, why);
    if (!g) error = why;
    return g;
}

}  // namespace

const std::vector<std::shared_ptr<throttle_group>>& throttle_groups() {
    return groups;
}

bool check_objects(const parsed_args& args, std::string& error) {
    static constexpr std::string_view known[] = {"secret",         "secret_keyring", "tls-creds-x509", "tls-creds-psk",
                                                 "tls-creds-anon", "authz-simple",   "authz-list",     "authz-listfile",
                                                 "authz-pam",      "throttle-group"};
    std::vector<std::shared_ptr<throttle_group>> made;
    std::vector<std::string> ids;
    for (const auto& v : args.all("object")) {
        if (v == "help") {
            error =
                "--object help: the object types accepted are secret, secret_keyring, tls-creds-x509, "
                "tls-creds-psk, tls-creds-anon, authz-* and throttle-group";
            return false;
        }
        // The type is the first item ("secret,id=x") or qom-type=.
        std::string list = v;
        std::string type;
        const auto comma = list.find(',');
        const std::string first = list.substr(0, comma);
        if (first.find('=') == std::string::npos) {
            type = first;
            list = comma == std::string::npos ? std::string{} : list.substr(comma + 1);
        }
        std::string why;
        auto opts = parse_dotted_options(list, why);
        if (!opts) {
            error = "--object " + v + ": " + why;
            return false;
        }
        if (type.empty()) {
            auto it = opts->find("qom-type");
            if (it == opts->end()) {
                error = "Parameter 'qom-type' is missing";
                return false;
            }
            type = it->second;
        }
        if (std::find(std::begin(known), std::end(known), type) == std::end(known)) {
            error = "invalid object type: " + type;
            return false;
        }
        if (opts->find("id") == opts->end() || opts->at("id").empty()) {
            error = "Parameter 'id' is missing";
            return false;
        }
        const std::string& id = opts->at("id");
        if (std::find(ids.begin(), ids.end(), id) != ids.end()) {
            error = "--object: duplicate id '" + id + "'";
            return false;
        }
        ids.push_back(id);
        if (type == "throttle-group") {
            auto g = make_group(*opts, error);
            if (!g) return false;
            made.push_back(std::move(g));
        }
    }
    groups = std::move(made);
    return true;
}

namespace {

/// json: names made from --image-opts lists, and the lists.
std::map<std::string, std::string>& given_names() {
    static std::map<std::string, std::string> names;
    return names;
}

}  // namespace

std::string name_as_given(const std::string& name) {
    const auto it = given_names().find(name);
    return it == given_names().end() ? name : it->second;
}

bool image_opts_name(const std::string& arg, std::string& out, std::string& error) {
    std::string why;
    auto opts = parse_dotted_options(arg, why);
    if (!opts) {
        error = "Invalid image options '" + arg + "': " + why;
        return false;
    }
    if (opts->empty()) {
        error = "Invalid image options '" + arg + "': no options given";
        return false;
    }
    out = json_name(*opts);
    given_names().emplace(out, arg);
    return true;
}

bool apply_image_options(parsed_args& args, std::size_t images, const char* format_key, std::string& error) {
    if (!check_objects(args, error)) return false;
    if (!args.has("image-opts")) return true;
    if (args.has(format_key)) {
        error = "--image-opts and --format are mutually exclusive";
        return false;
    }
    for (std::size_t i = 0; i < images && i < args.positional.size(); ++i) {
        std::string name;
        if (!image_opts_name(args.positional[i], name, error)) return false;
        args.positional[i] = std::move(name);
    }
    return true;
}

}  // namespace qed::tools
