// SPDX-License-Identifier: BSL-1.0
// The exports a qed-nbd serves: one per --export option, one per QED image
// of a --dir, or the single image of the qemu-nbd style command line.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qed/image.hpp"

namespace qed::nbd {

/// One export as the command line gives it.
struct export_options {
    std::string name;                    ///< what clients ask for
    std::string path;                    ///< the image file
    std::optional<image_format> format;  ///< nullopt: probe
    bool read_only = false;
    std::string description;
};

/// An --export option parsed: readonly= is kept apart because the global
/// -r is its default.
struct export_spec {
    export_options o;
    std::optional<bool> read_only;  ///< readonly=on|off if given
};

/// Parse "name=N,file=F[,readonly=on|off][,format=qed|raw][,description=TEXT]"
/// (",," is a literal comma). nullopt with `error` set when malformed.
std::optional<export_spec> parse_export(std::string_view spec, std::string& error);

/// Append one export per QED image in `dir` (sorted by file name, named by
/// it, format qed, `read_only` as given). Other entries are skipped, each
/// with a line to `log`. False with `error` set if the directory cannot be
/// read or holds no QED image.
bool scan_export_dir(const std::string& dir, bool read_only, std::vector<export_options>& out,
                     const std::function<void(const std::string&)>& log, std::string& error);

}  // namespace qed::nbd
