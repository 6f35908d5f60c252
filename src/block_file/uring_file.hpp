// SPDX-License-Identifier: BSL-1.0
// The io_uring backend: boost::asio::random_access_file in Asio's mixed
// mode (sockets and timers on epoll, files on io_uring).
#pragma once

#include "qed/block_file.hpp"

namespace qed::detail {

/// Takes ownership of `fd` (and `buffered_fd` when >= 0, used for misaligned
/// O_DIRECT transfers). Returns null with `ec` set if no ring can be created.
std::shared_ptr<block_file> make_uring_file(boost::asio::any_io_executor ex, int fd, bool read_only,
                                            int buffered_fd, std::error_code& ec);

}  // namespace qed::detail
