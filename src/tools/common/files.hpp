// SPDX-License-Identifier: BSL-1.0
// Facts about files by path (for info's actual-size and loop detection).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "qed/block_file.hpp"

namespace qed::tools {

/// Device and inode of `path`, or nullopt when it cannot be stat()ed.
std::optional<file_identity> identity_of(const std::string& path);

/// Bytes of storage the file uses (st_blocks * 512), or nullopt.
std::optional<std::uint64_t> allocated_bytes(const std::string& path);

bool file_exists(const std::string& path);

/// Where a backing file name stored in `image_path` points: absolute names
/// as they are, relative ones against the image's directory.
std::string resolve_backing(const std::string& image_path, const std::string& name);

/// Remove a file this program created (best effort, for failed creates).
void remove_file(const std::string& path);

}  // namespace qed::tools
