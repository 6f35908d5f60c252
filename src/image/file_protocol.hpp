// SPDX-License-Identifier: BSL-1.0
// QEMU's "file:" protocol prefix on image names ("file:a:b.qed" is the
// local file "a:b.qed"), so names written for qemu-img open here too.
#pragma once

#include <string>

namespace qed::detail {

/// The local path a name designates: without a leading "file:"; a relative
/// remainder whose first component holds a ':' gets "./" in front (as QEMU
/// shows it), so it can't be read as another protocol's name later. Names
/// without the prefix are returned unchanged.
std::string without_file_protocol(const std::string& name);

}  // namespace qed::detail
