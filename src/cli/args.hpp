// SPDX-License-Identifier: BSL-1.0
// Command-line parsing for the three programs (qed-img, qed-io, qed-nbd),
// in the style of getopt_long, as qemu-img, qemu-io and qemu-nbd use it: short options that may be bundled ("-qp") and
// take their value attached or as the next word ("-fqed", "-f qed"), long options with
// "--name=value" or "--name value", options mixed with positional words,
// and "--" ending the options.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qed::cli {

/// One option a program accepts: its short and/or long name, and whether it
/// takes a value. The parsed option is named by its long name when it has
/// one, else by its short name.
struct option_spec {
    char short_name = 0;         ///< 0: long form only
    std::string_view long_name;  ///< empty: short form only
    bool takes_value = false;
};

struct parsed_option {
    std::string name;   ///< "f" for -f, "output" for --output
    std::string value;  ///< empty when the option takes none
};

struct parsed_args {
    std::vector<parsed_option> options;  ///< in command-line order
    std::vector<std::string> positional;

    bool has(std::string_view name) const;
    /// The last value given for `name` (later options override earlier ones).
    std::optional<std::string> last(std::string_view name) const;
    /// Every value given for `name`, in order.
    std::vector<std::string> all(std::string_view name) const;
};

/// Parse `words` against `spec`. On a bad option, returns nullopt and sets
/// `error` to one line describing it (e.g. "invalid option -- 'x'").
std::optional<parsed_args> parse_args(const std::vector<std::string>& words, const std::vector<option_spec>& spec,
                                      std::string& error);

}  // namespace qed::cli
