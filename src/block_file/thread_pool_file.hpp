// SPDX-License-Identifier: BSL-1.0
// The threads backend: blocking pread/pwrite/fdatasync on the shared pool,
// completions posted back to the file's executor. Chosen automatically when
// no io_uring ring can be created; also serves io_uring files' misaligned
// O_DIRECT transfers (through a second, buffered descriptor).
#pragma once

#include "block_file/blocking_pool.hpp"
#include "block_file/posix_io.hpp"

namespace qed::detail {

/// Blocking transfers on the pool; shared by the threads and io_uring backends.
class pool_io {
public:
    pool_io(boost::asio::any_io_executor ex, std::shared_ptr<fd_holder> fd);

    void read(std::uint64_t offset, iovec_list iov, io_handler handler);
    void write(std::uint64_t offset, iovec_list iov, io_handler handler);
    void flush(op_handler handler);
    void resize(std::uint64_t size, op_handler handler);
    void punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler);
    int fd() const noexcept { return fd_->get(); }
    const boost::asio::any_io_executor& executor() const noexcept { return ex_; }

private:
    boost::asio::any_io_executor ex_;
    std::shared_ptr<fd_holder> fd_;
    std::shared_ptr<boost::asio::thread_pool> pool_;
};

std::shared_ptr<block_file> make_thread_pool_file(boost::asio::any_io_executor ex, int fd, bool read_only,
                                                  int buffered_fd);

}  // namespace qed::detail
