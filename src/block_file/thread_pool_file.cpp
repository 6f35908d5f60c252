// SPDX-License-Identifier: BSL-1.0
#include "block_file/thread_pool_file.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "qed/error.hpp"

namespace qed::detail {

pool_io::pool_io(boost::asio::any_io_executor ex, std::shared_ptr<fd_holder> fd)
    : ex_(std::move(ex)), fd_(std::move(fd)), pool_(blocking_pool()) {}

namespace {
struct transfer_result {
    std::error_code ec;
    std::size_t bytes = 0;
};
}  // namespace

void pool_io::read(std::uint64_t offset, iovec_list iov, io_handler handler) {
    run_blocking(
        *pool_, ex_,
        [fd = fd_, offset, iov = std::move(iov)]() mutable {
            transfer_result r;
            r.ec = full_preadv(fd->get(), offset, std::move(iov), r.bytes);
            return r;
        },
        [h = std::move(handler)](transfer_result r) mutable { std::move(h)(r.ec, r.bytes); });
}

void pool_io::write(std::uint64_t offset, iovec_list iov, io_handler handler) {
    run_blocking(
        *pool_, ex_,
        [fd = fd_, offset, iov = std::move(iov)]() mutable {
            transfer_result r;
            r.ec = full_pwritev(fd->get(), offset, std::move(iov), r.bytes);
            return r;
        },
        [h = std::move(handler)](transfer_result r) mutable { std::move(h)(r.ec, r.bytes); });
}

void pool_io::flush(op_handler handler) {
    run_blocking(
        *pool_, ex_,
        [fd = fd_] {
            std::error_code ec;
            while (::fdatasync(fd->get()) != 0) {
                if (errno == EINTR) continue;
                // EINVAL: a special file (character device such as
                // /dev/null) that has nothing to synchronize.
                struct stat st {};
                if (errno == EINVAL && ::fstat(fd->get(), &st) == 0 && !S_ISREG(st.st_mode)) break;
                ec = errno_code(errno);
                break;
            }
            return ec;
        },
        [h = std::move(handler)](std::error_code ec) mutable { std::move(h)(ec); });
}

void pool_io::resize(std::uint64_t size, op_handler handler) {
    run_blocking(
        *pool_, ex_,
        [fd = fd_, size] {
            std::error_code ec;
            while (::ftruncate(fd->get(), static_cast<off_t>(size)) != 0) {
                if (errno != EINTR) {
                    ec = errno_code(errno);
                    break;
                }
            }
            return ec;
        },
        [h = std::move(handler)](std::error_code ec) mutable { std::move(h)(ec); });
}

void pool_io::punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) {
    run_blocking(
        *pool_, ex_,
        [fd = fd_, offset, length] {
            std::error_code ec;
            while (::fallocate(fd->get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                               static_cast<off_t>(length)) != 0) {
                if (errno == EINTR) continue;
                ec =
                    (errno == EOPNOTSUPP || errno == ENOSYS) ? make_error_code(errc::not_supported) : errno_code(errno);
                break;
            }
            return ec;
        },
        [h = std::move(handler)](std::error_code ec) mutable { std::move(h)(ec); });
}

namespace {

// Ownership: shared by its openers; every pool job holds the descriptor
// (shared), so a file dropped with jobs in flight closes after them.
class thread_pool_file final : public block_file {
public:
    thread_pool_file(boost::asio::any_io_executor ex, int fd, bool read_only, int buffered_fd)
        : io_(ex, std::make_shared<fd_holder>(fd)),
          buffered_(buffered_fd >= 0 ? std::make_unique<pool_io>(ex, std::make_shared<fd_holder>(buffered_fd))
                                     : nullptr),
          read_only_(read_only),
          align_(buffered_fd >= 0 ? direct_alignment(fd) : 1),
          identity_(identity_of(fd)) {}

    executor_type get_executor() const override { return io_.executor(); }

    void async_read_at(std::uint64_t offset, std::span<const boost::asio::mutable_buffer> buffers,
                       io_handler handler) override {
        auto iov = to_iovecs(buffers);
        pick(offset, iov).read(offset, std::move(iov), std::move(handler));
    }

    void async_write_at(std::uint64_t offset, std::span<const boost::asio::const_buffer> buffers,
                        io_handler handler) override {
        if (read_only_) {
            boost::asio::post(io_.executor(),
                              [h = std::move(handler)]() mutable { std::move(h)(errno_code(EBADF), 0); });
            return;
        }
        auto iov = to_iovecs(buffers);
        pick(offset, iov).write(offset, std::move(iov), std::move(handler));
    }

    void async_flush(op_handler handler) override { io_.flush(std::move(handler)); }
    void async_resize(std::uint64_t size, op_handler handler) override { io_.resize(size, std::move(handler)); }
    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        if (read_only_) return block_file::async_punch_hole(offset, length, std::move(handler));
        io_.punch_hole(offset, length, std::move(handler));
    }
    std::uint64_t size(std::error_code& ec) const override { return file_size(io_.fd(), ec); }
    std::size_t alignment() const noexcept override { return align_; }
    std::error_code allocation(std::uint64_t offset, std::uint64_t length, bool& data,
                               std::uint64_t& run) const override {
        return seek_allocation(io_.fd(), offset, length, data, run);
    }
    file_identity identity() const noexcept override { return identity_; }
    bool read_only() const noexcept override { return read_only_; }
    const char* backend_name() const noexcept override { return "threads"; }

private:
    // O_DIRECT transfers that break the alignment rules go through the
    // buffered descriptor; Linux keeps the two coherent.
    pool_io& pick(std::uint64_t offset, const iovec_list& iov) {
        if (buffered_ && !is_aligned(offset, iov, align_)) return *buffered_;
        return io_;
    }

    pool_io io_;
    std::unique_ptr<pool_io> buffered_;
    bool read_only_;
    std::size_t align_;
    file_identity identity_;
};

}  // namespace

std::shared_ptr<block_file> make_thread_pool_file(boost::asio::any_io_executor ex, int fd, bool read_only,
                                                  int buffered_fd) {
    return std::make_shared<thread_pool_file>(std::move(ex), fd, read_only, buffered_fd);
}

}  // namespace qed::detail
