// SPDX-License-Identifier: BSL-1.0
// QEMU's ways of naming an image by its block-node options: "json:{...}"
// file names (on command lines and as backing file names in image headers)
// and dotted option lists ("driver=qed,file.filename=x", qemu-img's
// --image-opts). Both come down to one flat map of dotted keys, as QEMU's
// qdict_flatten makes them: {"driver":"qed","file":{"driver":"file",
// "filename":"x"}} is driver=qed, file.driver=file, file.filename=x.
//
// image::async_open accepts json: names; the drivers such a name may use are
// listed in src/image/node_open.cpp (qed, raw, file, host_device,
// host_cdrom, nbd, ssh, blkdebug, null-co).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

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
/// QEMU's spacing ({"driver": "qed", "file": {...}}).
std::string json_name(const node_options& options);

/// The options below `prefix` ("file" gives file.driver as driver).
node_options sub_options(const node_options& options, std::string_view prefix);

}  // namespace qed
