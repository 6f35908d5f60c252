// SPDX-License-Identifier: BSL-1.0
// QEMU's ways of naming an image by its block-node options: "json:{...}"
// file names (on command lines and as backing file names in image headers)
// and dotted option lists ("driver=qed,file.filename=x", qemu-img's
// --image-opts). Both come down to one flat map of dotted keys, as QEMU's
// qdict_flatten makes them: {"driver":"qed","file":{"driver":"file",
// "filename":"x"}} is driver=qed, file.driver=file, file.filename=x.
//
// image::async_open accepts json: names; the drivers such a name may use are
// node_drivers() (the table in src/image/node_open.cpp).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qed {

/// A block node's options, flattened to dotted keys. Values are text: JSON
/// numbers as written, booleans "on"/"off", null the empty string (QEMU's
/// "backing": null and backing= both mean "no backing file").
using node_options = std::map<std::string, std::string>;

/// Whether `name` is a json: name ("json:" then the options).
bool is_json_name(std::string_view name) noexcept;

/// The options of a json: name (the prefix may be left out). QEMU's JSON
/// dialect: strings in double or single quotes. The top level must be an
/// object; a key given twice after flattening is refused. On failure:
/// nullopt, and `error` says what is wrong in QEMU's words where it has them.
std::optional<node_options> parse_json_options(std::string_view name, std::string& error);

/// The options of "key=value,key2=value2" (",," is a literal comma).
std::optional<node_options> parse_dotted_options(std::string_view text, std::string& error);

/// The json: name of `options`: nested objects, keys in sorted order, with
/// QEMU's spacing ({"driver": "qed", "file": {...}}); an object whose keys
/// are 0..n-1 is written as a list, as QEMU writes a quorum's "children".
std::string json_name(const node_options& options);

/// The drivers a node of a json: name or of an --image-opts list may name
/// (its "driver": formats, protocols and filters), in alphabetical order:
/// what qemu-img's help calls "Supported formats".
std::vector<std::string> node_drivers();

/// The name QEMU gives an image opened from `options` (and that its
/// messages start with): a plain file's path; a protocol's own file name
/// where it has one (`nbd://HOST:PORT`, `nbd+unix://?socket=PATH`,
/// `ssh://USER@HOST:PORT/PATH`, `blkdebug:RULES:IMAGE`, `null-co://`); else
/// the json: name of the options.
std::string node_display_name(const node_options& options);

/// The options below `prefix` ("file" gives file.driver as driver).
node_options sub_options(const node_options& options, std::string_view prefix);

}  // namespace qed
