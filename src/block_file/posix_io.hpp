// SPDX-License-Identifier: BSL-1.0
// Blocking POSIX helpers shared by the file backends: full-length
// preadv/pwritev loops, sizes, identities, O_DIRECT alignment.
#pragma once

#include <sys/uio.h>

#include <boost/container/small_vector.hpp>
#include <cstdint>
#include <span>
#include <system_error>

#include "qed/block_file.hpp"

namespace qed::detail {

/// Owns a file descriptor; closes it when the last user lets go.
class fd_holder {
public:
    explicit fd_holder(int fd) noexcept : fd_(fd) {}
    ~fd_holder();
    fd_holder(const fd_holder&) = delete;
    fd_holder& operator=(const fd_holder&) = delete;
    int get() const noexcept { return fd_; }

private:
    int fd_;
};

using iovec_list = boost::container::small_vector<::iovec, 8>;

iovec_list to_iovecs(std::span<const boost::asio::mutable_buffer> buffers);
iovec_list to_iovecs(std::span<const boost::asio::const_buffer> buffers);
std::size_t total_size(const iovec_list& iov) noexcept;

/// Drop the first `n` bytes from an iovec list (after a short transfer).
void consume(iovec_list& iov, std::size_t n) noexcept;
/// Fill what is left of an iovec list with zeros (read past end of file).
void zero_fill(const iovec_list& iov) noexcept;

/// Read all of `iov` at `offset`; zeros past end of file. Returns bytes (== total) or an error.
std::error_code full_preadv(int fd, std::uint64_t offset, iovec_list iov, std::size_t& done) noexcept;
/// Write all of `iov` at `offset`, continuing after short writes.
std::error_code full_pwritev(int fd, std::uint64_t offset, iovec_list iov, std::size_t& done) noexcept;

std::uint64_t file_size(int fd, std::error_code& ec) noexcept;
/// SEEK_DATA / SEEK_HOLE: does [offset, offset+length) start with data, and for how long.
std::error_code seek_allocation(int fd, std::uint64_t offset, std::uint64_t length, bool& data,
                                std::uint64_t& run) noexcept;
file_identity identity_of(int fd) noexcept;
/// Alignment O_DIRECT transfers need on this file (offset, length, memory).
std::size_t direct_alignment(int fd) noexcept;
/// True when every buffer address and length, and the offset, are multiples of `align`.
bool is_aligned(std::uint64_t offset, const iovec_list& iov, std::size_t align) noexcept;

inline std::error_code errno_code(int e) noexcept {
    return {e, std::system_category()};
}

}  // namespace qed::detail
