// SPDX-License-Identifier: BSL-1.0
// The io_uring backend: a ring of our own per io_context (through liburing),
// shared by every file opened on it, woken through an eventfd that the
// io_context's reactor waits on, so timers, sockets and file I/O share one
// io_context::run().
#pragma once

#include <string>

#include "qed/block_file.hpp"

namespace qed::detail {

/// Takes ownership of `fd` (and `buffered_fd` when >= 0, used for misaligned
/// O_DIRECT transfers) on success. Returns null with `ec` set, and `why` a
/// short reason for a log line, if the executor's io_context can't have a
/// ring (then `fd` and `buffered_fd` stay with the caller).
std::shared_ptr<block_file> make_uring_file(boost::asio::any_io_executor ex, int fd, bool read_only, int buffered_fd,
                                            std::error_code& ec, std::string& why);

}  // namespace qed::detail
