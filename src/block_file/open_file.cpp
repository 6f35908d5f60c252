// SPDX-License-Identifier: BSL-1.0
// Opening a file by path and choosing its backend.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "block_file/file_lock.hpp"
#include "block_file/nbd_file.hpp"
#include "block_file/posix_io.hpp"
#include "block_file/rbd_file.hpp"
#include "block_file/ssh_file.hpp"
#include "block_file/thread_pool_file.hpp"
#include "block_file/uring_file.hpp"
#include "qed/blkdebug.hpp"
#include "qed/block_file.hpp"
#include "qed/error.hpp"

namespace qed {
namespace {

/// Images live in regular files or block devices. Anything else is refused
/// before it is used (a character device only when asked for, as QEMU's
/// host_device protocol): a FIFO or character device would block reads forever
/// or stream bytes that are not an image. The caller opened with O_NONBLOCK
/// so that open(2) itself never waits (a FIFO without a writer); the check is
/// on the descriptor, so the path can't be swapped in between. On success
/// O_NONBLOCK is cleared again. `same_as`, when >= 0, is a descriptor that
/// must refer to the same file (the buffered twin of an O_DIRECT one).
std::error_code check_file_type(int fd, bool character_device, int same_as = -1) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return detail::errno_code(errno);
    if (S_ISDIR(st.st_mode)) return detail::errno_code(EISDIR);
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode) && !(character_device && S_ISCHR(st.st_mode)))
        return errc::not_a_regular_file;
    if (same_as >= 0) {
        struct stat first {};
        if (::fstat(same_as, &first) != 0) return detail::errno_code(errno);
        if (first.st_dev != st.st_dev || first.st_ino != st.st_ino) return errc::not_a_regular_file;
    }
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) return detail::errno_code(errno);
    return {};
}

}  // namespace

bool is_remote_name(std::string_view name) noexcept {
    return detail::is_nbd_name(name) || detail::is_rbd_name(name) || detail::is_ssh_name(name);
}

std::shared_ptr<block_file> open_file(const boost::asio::any_io_executor& ex, const std::string& path,
                                      const file_options& options, std::error_code& ec) {
    ec.clear();
    if (detail::is_nbd_name(path)) return detail::open_nbd_file(ex, path, options, ec);
    if (detail::is_rbd_name(path)) return detail::open_rbd_file(ex, path, options, ec);
    if (detail::is_ssh_name(path)) {
        detail::ssh_location where;
        std::string why;
        if (!detail::parse_ssh_name(path, where, why)) {
            if (options.log) options.log(path + ": " + why);
            ec = errc::invalid_argument;
            return nullptr;
        }
        return detail::open_ssh_file(ex, where, options, path, ec);
    }
    if (is_blkdebug_name(path)) {
        blkdebug_config config;
        std::string error;
        if ((ec = parse_blkdebug_name(path, config, error))) {
            if (options.log) options.log(error);
            return nullptr;
        }
        return open_blkdebug_file(ex, config, options, ec);
    }
    if (is_null_name(path)) {
        // QEMU takes the size (default 1 GiB) only as an option, never in the name.
        const std::string_view exact = path.starts_with("null-co:") ? "null-co://" : "null-aio://";
        if (path != exact) {
            if (options.log)
                options.log(path + ": The only allowed filename for this driver is '" + std::string(exact) + "'");
            ec = errc::invalid_argument;
            return nullptr;
        }
        return make_null_file(ex, std::uint64_t{1} << 30, options.read_only);
    }
    int flags = O_CLOEXEC | (options.read_only ? O_RDONLY : O_RDWR);
    // Created files are truncated only once locked: a refused create
    // leaves a file another process is using alone.
    const bool create = options.create && !options.read_only;
    if (create) flags |= O_CREAT;
    const int fd = ::open(path.c_str(), flags | O_NONBLOCK | (options.direct ? O_DIRECT : 0), 0644);
    if (fd < 0) {
        // ENXIO: what open(2) of a UNIX socket fails with.
        ec = errno == ENXIO ? std::error_code(errc::not_a_regular_file) : detail::errno_code(errno);
        return nullptr;
    }
    if ((ec = check_file_type(fd, options.character_device))) {
        ::close(fd);
        return nullptr;
    }
    if ((ec = detail::lock_file(fd, path, options)) || (create && ::ftruncate(fd, 0) < 0)) {
        if (!ec) ec = detail::errno_code(errno);
        ::close(fd);  // drops any lock taken
        return nullptr;
    }
    // With O_DIRECT, misaligned transfers use a second, buffered descriptor.
    int buffered = -1;
    if (options.direct) {
        buffered = ::open(path.c_str(), (flags & ~O_CREAT) | O_NONBLOCK, 0644);
        if (buffered < 0 || (ec = check_file_type(buffered, options.character_device, fd))) {
            if (buffered < 0)
                ec = detail::errno_code(errno);
            else
                ::close(buffered);
            ::close(fd);
            return nullptr;
        }
    }
    // automatic: io_uring (buffered transfers with IOSQE_ASYNC), the thread
    // pool only where no ring can be set up. Measured against the pool for
    // O_DIRECT and page-cache I/O: bench/README.md, "Buffered I/O".
    const bool use_uring = options.backend != file_backend::threads;
    if (use_uring) {
        std::error_code uring_ec;
        std::string why;
        if (auto f = detail::make_uring_file(ex, fd, options.read_only, buffered, uring_ec, why)) return f;
        if (options.backend == file_backend::io_uring) {
            ec = uring_ec;
            ::close(fd);
            if (buffered >= 0) ::close(buffered);
            return nullptr;
        }
        if (options.log) options.log(path + ": io_uring unavailable (" + why + "): using the thread pool");
    }
    return detail::make_thread_pool_file(ex, fd, options.read_only, buffered);
}

}  // namespace qed
