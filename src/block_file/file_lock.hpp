// SPDX-License-Identifier: BSL-1.0
// Image locking as QEMU does it: open-file-description locks on single
// bytes of the image file, so qemu-img/qemu-io/qemu-nbd and our tools see
// each other's permissions.
//
// Byte 100 + b is read-locked while this open holds permission b; byte
// 200 + b while it does not let others take permission b. Before taking a
// permission an opener tests byte 200 + b, before refusing to share one it
// tests byte 100 + b (an exclusive F_OFD_GETLK: any other description's
// read lock there is a conflict). Locks are taken first and tested after,
// so two processes opening at once can't both miss each other. They belong
// to the open file description: closing the descriptor (or the process
// dying, even by SIGKILL) drops them.
#pragma once

#include <string>
#include <system_error>

#include "qed/block_file.hpp"

namespace qed::detail {

/// QEMU's permission bits (BLK_PERM_*), as lock byte offsets from 100 / 200.
enum perm : unsigned {
    perm_consistent_read = 1u << 0,
    perm_write = 1u << 1,
    perm_write_unchanged = 1u << 2,
    perm_resize = 1u << 3,
    perm_graph_mod = 1u << 4,
    perm_all = (1u << 5) - 1,
};

/// What an open holds and what it lets others hold.
struct lock_permissions {
    unsigned perm = 0;
    unsigned shared = perm_all;
};

/// The permissions an open with these options asks for, the ones QEMU's
/// QED driver asks for on its file: read-write CR+WRITE+RESIZE sharing
/// neither WRITE nor RESIZE; read-only CR, sharing neither WRITE nor RESIZE
/// (a reader needs the image to hold still); force-share CR, sharing all;
/// create WRITE+RESIZE, sharing all (as QEMU's file creation).
lock_permissions permissions_for(const file_options& options) noexcept;

/// Take the locks for `p` on `fd` and test for conflicting ones.
/// On a conflict returns errc::image_locked with `message` set to QEMU's
/// wording: `Failed to get "write" lock` (a permission someone doesn't
/// share) or `Failed to get shared "write" lock` (someone holds what we
/// won't share). On an unsupported file system returns the errno
/// (EINVAL, ENOLCK, EOPNOTSUPP) with `unsupported` set.
std::error_code apply_locks(int fd, const lock_permissions& p, std::string& message, bool& unsupported) noexcept;

/// Lock `fd` as `options` ask (locking=on|off|auto), logging through
/// options.log. Returns the error that refuses the open, if any.
std::error_code lock_file(int fd, const std::string& path, const file_options& options);

}  // namespace qed::detail
