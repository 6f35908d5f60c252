// SPDX-License-Identifier: BSL-1.0
// qemu-img's and qemu-io's --object and --image-opts.
//
// --image-opts: the image argument is a dotted option list
// ("driver=qed,file.filename=x"), opened as the json: name it amounts to.
// --object: the objects QEMU's tools take for encryption keys and TLS
// (secret, tls-creds-*, authz-*) are checked and accepted; nothing in a QED
// or raw image uses them. throttle-group objects become throttle groups
// (qed/throttle.hpp) that the images opened by the command can join
// (driver=throttle,throttle-group=ID). Any other type is refused.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/cli.hpp"

namespace qed {
class throttle_group;
}

namespace qed::tools {

/// Check every --object and make the throttle groups. False with `error`
/// set (QEMU's words) for a malformed one, an unknown type or invalid
/// throttle limits.
bool check_objects(const parsed_args& args, std::string& error);

/// The throttle groups the last check_objects made: open_image gives them
/// to every image it opens.
const std::vector<std::shared_ptr<throttle_group>>& throttle_groups();

/// The json: name an --image-opts argument designates. False with `error`.
bool image_opts_name(const std::string& arg, std::string& out, std::string& error);

/// The name an image argument had before --image-opts turned it into a
/// json: name (the option list itself), for messages; other names as they are.
std::string name_as_given(const std::string& name);

/// Both of the above for a command: objects checked, and with --image-opts
/// the first `images` positional words replaced by json: names (refused
/// with -f, as qemu-img does). `format_key` is the name of the format
/// option ("format" or "f"). False with `error` set.
bool apply_image_options(parsed_args& args, std::size_t images, const char* format_key, std::string& error);

}  // namespace qed::tools
