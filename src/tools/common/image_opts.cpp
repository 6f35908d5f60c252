// SPDX-License-Identifier: BSL-1.0
#include "common/image_opts.hpp"

#include <algorithm>
#include <map>
#include <string_view>

#include "qed/node_options.hpp"

namespace qed::tools {

bool check_objects(const parsed_args& args, std::string& error) {
    static constexpr std::string_view known[] = {"secret",        "secret_keyring", "tls-creds-x509",
                                                 "tls-creds-psk", "tls-creds-anon", "authz-simple",
                                                 "authz-list",    "authz-listfile", "authz-pam"};
    for (const auto& v : args.all("object")) {
        if (v == "help") {
            error =
                "--object help: the object types accepted are secret, secret_keyring, tls-creds-x509, "
                "tls-creds-psk, tls-creds-anon and authz-*";
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
    }
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
