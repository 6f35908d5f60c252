// SPDX-License-Identifier: BSL-1.0
// Opening an image from a tree of QEMU block-node options (a json: name):
// the format driver on top, the driver of its "file" below, and formats
// nested in formats (a qed image whose file is a qed image).
//
// The seam for new drivers is the table in node_open.cpp: a driver for a
// node's "file" is one function that turns that node's options into a
// block_file (see child_driver there); adding blkdebug or null-co is one
// function and one line in that table.
#pragma once

#include "image/backing.hpp"
#include "qed/node_options.hpp"

namespace qed::detail {

/// A tree of options that names a file plainly: a format (or none, to probe)
/// over a local file or a remote URI, and nothing else. QEMU reports such an
/// image by the file's name ("reconstructable filename"), and so do we.
struct plain_node {
    std::string path;
    std::optional<image_format> format;  ///< nullopt: probe
    bool character_device = false;       ///< host_device / host_cdrom
};
std::optional<plain_node> plain_form(const node_options& options);

/// The directory a relative backing file name of the image `options`
/// describe is resolved in (QEMU's bdrv_dirname): that of the file below the
/// format and filter nodes ("" for the current one, else ending in '/').
/// nullopt with `why` (QEMU's words) where there is none: a quorum (its
/// children may lie in different directories), a remote or null node.
std::optional<std::string> node_directory(const node_options& options, std::string& why);

/// The same for an image name: a path, a json: name, a blkdebug: name...
std::optional<std::string> name_directory(const std::string& name, std::string& why);

/// Open the image `options` describe. `format` is the caller's -f (it must
/// agree with the tree's driver). Failures are logged in one line.
boost::asio::awaitable<device_result> open_node(boost::asio::any_io_executor ex, node_options options,
                                                std::optional<image_format> format, open_options open, unsigned depth,
                                                std::vector<file_identity> chain);

/// Parse a json: name and reduce it to a plain one where possible. On
/// failure the reason is logged ("NAME: why") and nullopt returned with
/// `ec` set.
std::optional<node_options> parse_json_name(const std::string& name, const open_options& open, std::error_code& ec);

}  // namespace qed::detail
