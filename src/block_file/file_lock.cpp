// SPDX-License-Identifier: BSL-1.0
#include "block_file/file_lock.hpp"

#include <fcntl.h>

#include <cerrno>

#include "block_file/posix_io.hpp"
#include "qed/error.hpp"

namespace qed::detail {

namespace {

constexpr off_t perm_lock_base = 100;    // held while holding the permission
constexpr off_t shared_lock_base = 200;  // held while not sharing it

const char* perm_name(unsigned bit) noexcept {
    switch (bit) {
        case 0:
            return "consistent read";
        case 1:
            return "write";
        case 2:
            return "write unchanged";
        case 3:
            return "resize";
        default:
            return "change children";
    }
}

int ofd_lock(int fd, int cmd, short type, off_t byte, ::flock& fl) noexcept {
    fl = {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    fl.l_pid = 0;  // required by F_OFD_*
    int r;
    do {
        r = ::fcntl(fd, cmd, &fl);
    } while (r < 0 && errno == EINTR);
    return r;
}

// Drop every lock byte this description may hold (100..204).
void ofd_unlock_all(int fd, ::flock& fl) noexcept {
    fl = {};
    fl.l_type = F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = perm_lock_base;
    fl.l_len = shared_lock_base + 5 - perm_lock_base;
    (void)::fcntl(fd, F_OFD_SETLK, &fl);
}

bool is_unsupported(int e) noexcept {
    return e == EINVAL || e == ENOLCK || e == EOPNOTSUPP || e == ENOSYS;
}

}  // namespace

lock_permissions permissions_for(const file_options& o) noexcept {
    if (o.create && !o.read_only) return {perm_write | perm_resize, perm_all};
    if (o.force_share) return {perm_consistent_read, perm_all};
    const unsigned unshared = perm_write | perm_resize;
    if (o.read_only) return {perm_consistent_read, perm_all & ~unshared};
    return {perm_consistent_read | perm_write | perm_resize, perm_all & ~unshared};
}

std::error_code apply_locks(int fd, const lock_permissions& p, std::string& message, bool& unsupported) noexcept {
    unsupported = false;
    ::flock fl{};
    auto fail = [&](int e) {
        unsupported = is_unsupported(e);
        return errno_code(e);
    };
    // Take: one read lock per byte, so others' tests see us.
    for (unsigned b = 0; b < 5; ++b) {
        const unsigned bit = 1u << b;
        if ((p.perm & bit) && ofd_lock(fd, F_OFD_SETLK, F_RDLCK, perm_lock_base + b, fl) < 0) return fail(errno);
        if (!(p.shared & bit) && ofd_lock(fd, F_OFD_SETLK, F_RDLCK, shared_lock_base + b, fl) < 0) return fail(errno);
    }
    // Test, in QEMU's order: the permissions we take, then the ones we don't share.
    for (unsigned b = 0; b < 5; ++b) {
        if (!(p.perm & (1u << b))) continue;
        if (ofd_lock(fd, F_OFD_GETLK, F_WRLCK, shared_lock_base + b, fl) < 0) return fail(errno);
        if (fl.l_type != F_UNLCK) {
            message = std::string("Failed to get \"") + perm_name(b) + "\" lock";
            return errc::image_locked;
        }
    }
    for (unsigned b = 0; b < 5; ++b) {
        if (p.shared & (1u << b)) continue;
        if (ofd_lock(fd, F_OFD_GETLK, F_WRLCK, perm_lock_base + b, fl) < 0) return fail(errno);
        if (fl.l_type != F_UNLCK) {
            message = std::string("Failed to get shared \"") + perm_name(b) + "\" lock";
            return errc::image_locked;
        }
    }
    return {};
}

std::error_code lock_file(int fd, const std::string& path, const file_options& options) {
    if (options.force_share && !options.read_only) {
        if (options.log) options.log(path + ": force-share=on can only be used with read-only images");
        return errc::invalid_argument;
    }
    if (options.locking == lock_mode::off) return {};
    std::string message;
    bool unsupported = false;
    const auto ec = apply_locks(fd, permissions_for(options), message, unsupported);
    if (!ec) return {};
    // Whatever was taken goes with the descriptor, which the caller closes.
    if (ec == errc::image_locked) {
        if (options.log) options.log(path + ": " + message + ": Is another process using the image [" + path + "]?");
        return ec;
    }
    if (unsupported && options.locking == lock_mode::automatic) {
        ::flock fl{};
        ofd_unlock_all(fd, fl);
        if (options.log)
            options.log(path + ": locking=auto: the file system does not support OFD locks (" + ec.message() +
                        "), the image is not locked");
        return {};
    }
    if (options.log) options.log(path + ": could not lock the image (locking=on): " + ec.message());
    return ec;
}

}  // namespace qed::detail
