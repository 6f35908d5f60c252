// SPDX-License-Identifier: BSL-1.0
#include "block_file/posix_io.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace qed::detail {

fd_holder::~fd_holder() {
    if (fd_ >= 0) ::close(fd_);
}

iovec_list to_iovecs(std::span<const boost::asio::mutable_buffer> buffers) {
    iovec_list iov;
    iov.reserve(buffers.size());
    for (const auto& b : buffers)
        if (b.size() != 0) iov.push_back({b.data(), b.size()});
    return iov;
}

iovec_list to_iovecs(std::span<const boost::asio::const_buffer> buffers) {
    iovec_list iov;
    iov.reserve(buffers.size());
    for (const auto& b : buffers)
        if (b.size() != 0) iov.push_back({const_cast<void*>(b.data()), b.size()});
    return iov;
}

std::size_t total_size(const iovec_list& iov) noexcept {
    std::size_t n = 0;
    for (const auto& v : iov) n += v.iov_len;
    return n;
}

void consume(iovec_list& iov, std::size_t n) noexcept {
    std::size_t drop = 0;
    while (drop < iov.size() && n >= iov[drop].iov_len) n -= iov[drop++].iov_len;
    iov.erase(iov.begin(), iov.begin() + static_cast<std::ptrdiff_t>(drop));
    if (!iov.empty() && n != 0) {
        iov.front().iov_base = static_cast<char*>(iov.front().iov_base) + n;
        iov.front().iov_len -= n;
    }
}

void zero_fill(const iovec_list& iov) noexcept {
    for (const auto& v : iov) std::memset(v.iov_base, 0, v.iov_len);
}

namespace {
constexpr std::size_t max_iov = IOV_MAX;

int iov_count(const iovec_list& iov) noexcept {
    return static_cast<int>(iov.size() < max_iov ? iov.size() : max_iov);
}
}  // namespace

std::error_code full_preadv(int fd, std::uint64_t offset, iovec_list iov, std::size_t& done) noexcept {
    done = 0;
    while (!iov.empty()) {
        const ssize_t r = ::preadv(fd, iov.data(), iov_count(iov), static_cast<off_t>(offset + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return errno_code(errno);
        }
        if (r == 0) {  // end of file: the rest reads as zeros
            const std::size_t rest = total_size(iov);
            zero_fill(iov);
            done += rest;
            break;
        }
        done += static_cast<std::size_t>(r);
        consume(iov, static_cast<std::size_t>(r));
    }
    return {};
}

std::error_code full_pwritev(int fd, std::uint64_t offset, iovec_list iov, std::size_t& done) noexcept {
    done = 0;
    while (!iov.empty()) {
        const ssize_t r = ::pwritev(fd, iov.data(), iov_count(iov), static_cast<off_t>(offset + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return errno_code(errno);
        }
        if (r == 0) return errno_code(EIO);  // no progress: don't spin
        done += static_cast<std::size_t>(r);
        consume(iov, static_cast<std::size_t>(r));
    }
    return {};
}

std::uint64_t file_size(int fd, std::error_code& ec) noexcept {
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        ec = errno_code(errno);
        return 0;
    }
    ec.clear();
    if (S_ISBLK(st.st_mode)) {
        std::uint64_t bytes = 0;
        if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) {
            ec = errno_code(errno);
            return 0;
        }
        return bytes;
    }
    return static_cast<std::uint64_t>(st.st_size);
}

std::error_code seek_allocation(int fd, std::uint64_t offset, std::uint64_t length, bool& data,
                                std::uint64_t& run) noexcept {
    data = true;
    run = length;
    const off_t next_data = ::lseek(fd, static_cast<off_t>(offset), SEEK_DATA);
    if (next_data < 0) {
        if (errno == ENXIO) {  // only a hole (or end of file) from here
            data = false;
            return {};
        }
        return errno_code(errno);  // e.g. EINVAL: filesystem can't tell; say data
    }
    if (static_cast<std::uint64_t>(next_data) > offset) {
        data = false;
        run = std::min<std::uint64_t>(length, static_cast<std::uint64_t>(next_data) - offset);
        return {};
    }
    const off_t next_hole = ::lseek(fd, static_cast<off_t>(offset), SEEK_HOLE);
    if (next_hole < 0) return errno_code(errno);
    run = std::min<std::uint64_t>(length, static_cast<std::uint64_t>(next_hole) - offset);
    if (run == 0) run = length;
    return {};
}

file_identity identity_of(int fd) noexcept {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return {};
    return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
}

std::size_t direct_alignment(int fd) noexcept {
#ifdef STATX_DIOALIGN
    struct statx stx {};
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN) &&
        stx.stx_dio_offset_align != 0) {
        return std::max<std::size_t>({stx.stx_dio_offset_align, stx.stx_dio_mem_align, 512});
    }
#endif
    int lbs = 0;
    if (::ioctl(fd, BLKSSZGET, &lbs) == 0 && lbs > 0) return static_cast<std::size_t>(lbs);
    return 4096;  // safe for every filesystem we know
}

bool is_aligned(std::uint64_t offset, const iovec_list& iov, std::size_t align) noexcept {
    if (offset % align) return false;
    for (const auto& v : iov)
        if (reinterpret_cast<std::uintptr_t>(v.iov_base) % align || v.iov_len % align) return false;
    return true;
}

}  // namespace qed::detail
