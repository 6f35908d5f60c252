#include "block_file/uring_file.hpp"

#include "block_file/posix_io.hpp"
#include "block_file/thread_pool_file.hpp"

#include <boost/asio/error.hpp>
#include <boost/asio/random_access_file.hpp>
#include <boost/container/small_vector.hpp>

#include <liburing.h>

#include <cerrno>
#include <cstring>
#include <unistd.h>

namespace qed {

bool io_uring_available() noexcept {
    static const bool available = [] {
        // Asio asks for this many entries; probe with the same number so a
        // locked-memory limit that would stop Asio stops us here instead.
        ::io_uring ring{};
        if (::io_uring_queue_init(16384, &ring, 0) != 0) return false;
        ::io_uring_queue_exit(&ring);
        return true;
    }();
    return available;
}

namespace detail {
namespace {

namespace asio = boost::asio;

std::error_code to_std(const boost::system::error_code& ec) {
    if (!ec) return {};
    if (ec.category() == boost::system::system_category() || ec.category() == boost::system::generic_category())
        return errno_code(ec.value());
    return errno_code(EIO);
}

class uring_file final : public block_file {
public:
    uring_file(asio::any_io_executor ex, int fd, bool read_only, int buffered_fd)
        : file_(ex),
          pool_(ex, std::make_shared<fd_holder>(::dup(fd))),
          buffered_(buffered_fd >= 0 ? std::make_unique<pool_io>(ex, std::make_shared<fd_holder>(buffered_fd))
                                     : nullptr),
          read_only_(read_only),
          align_(buffered_fd >= 0 ? direct_alignment(fd) : 1),
          identity_(identity_of(fd)) {
        file_.assign(fd);
    }

    executor_type get_executor() const override { return pool_.executor(); }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        if (buffered_) {
            auto iov = to_iovecs(buffers);
            if (!is_aligned(offset, iov, align_)) return buffered_->read(offset, std::move(iov), std::move(handler));
        }
        auto op = std::make_unique<transfer<asio::mutable_buffer>>(offset, buffers, std::move(handler));
        if (op->total == 0) return complete_later(std::move(op));  // nothing to submit: never complete inline
        step_read(std::move(op));
    }

    void async_write_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                        io_handler handler) override {
        if (read_only_) {
            asio::post(get_executor(), [h = std::move(handler)]() mutable { std::move(h)(errno_code(EBADF), 0); });
            return;
        }
        if (buffered_) {
            auto iov = to_iovecs(buffers);
            if (!is_aligned(offset, iov, align_)) return buffered_->write(offset, std::move(iov), std::move(handler));
        }
        auto op = std::make_unique<transfer<asio::const_buffer>>(offset, buffers, std::move(handler));
        if (op->total == 0) return complete_later(std::move(op));
        step_write(std::move(op));
    }

    void async_flush(op_handler handler) override { pool_.flush(std::move(handler)); }
    void async_resize(std::uint64_t size, op_handler handler) override { pool_.resize(size, std::move(handler)); }
    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        if (read_only_) return block_file::async_punch_hole(offset, length, std::move(handler));
        pool_.punch_hole(offset, length, std::move(handler));
    }
    std::uint64_t size(std::error_code& ec) const override { return file_size(pool_.fd(), ec); }
    std::size_t alignment() const noexcept override { return align_; }
    std::error_code allocation(std::uint64_t offset, std::uint64_t length, bool& data,
                               std::uint64_t& run) const override {
        return seek_allocation(pool_.fd(), offset, length, data, run);
    }
    file_identity identity() const noexcept override { return identity_; }
    bool read_only() const noexcept override { return read_only_; }
    const char* backend_name() const noexcept override { return "io_uring"; }

private:
    // One full-length transfer, continued after short reads and writes.
    // Asio submits at most 64 iovecs per operation; the rest follow.
    template <class Buffer>
    struct transfer {
        transfer(std::uint64_t off, std::span<const Buffer> b, io_handler h)
            : offset(off), buffers(b.begin(), b.end()), handler(std::move(h)) {
            for (const auto& x : buffers) total += x.size();
        }
        void consume(std::size_t n) {
            done += n;
            std::size_t drop = 0;
            while (drop < buffers.size() && n >= buffers[drop].size()) n -= buffers[drop++].size();
            buffers.erase(buffers.begin(), buffers.begin() + static_cast<std::ptrdiff_t>(drop));
            if (!buffers.empty() && n) buffers.front() += n;
        }
        std::uint64_t offset;
        boost::container::small_vector<Buffer, 8> buffers;
        io_handler handler;
        std::size_t total = 0;
        std::size_t done = 0;
    };

    void step_read(std::unique_ptr<transfer<asio::mutable_buffer>> op) {
        if (op->buffers.empty()) return finish(std::move(op), {});
        const std::uint64_t at = op->offset + op->done;
        auto& bufs = op->buffers;
        file_.async_read_some_at(at, bufs, [this, op = std::move(op)](boost::system::error_code ec, std::size_t n) mutable {
            if (ec == asio::error::eof || (!ec && n == 0)) {
                // Past the end of the file: the rest reads as zeros.
                for (auto& b : op->buffers) std::memset(b.data(), 0, b.size());
                op->done = op->total;
                return finish(std::move(op), {});
            }
            if (ec == asio::error::interrupted || ec == asio::error::try_again) return step_read(std::move(op));
            if (ec) return finish(std::move(op), to_std(ec));
            op->consume(n);
            step_read(std::move(op));
        });
    }

    void step_write(std::unique_ptr<transfer<asio::const_buffer>> op) {
        if (op->buffers.empty()) return finish(std::move(op), {});
        const std::uint64_t at = op->offset + op->done;
        auto& bufs = op->buffers;
        file_.async_write_some_at(at, bufs, [this, op = std::move(op)](boost::system::error_code ec, std::size_t n) mutable {
            if (ec == asio::error::interrupted || ec == asio::error::try_again) return step_write(std::move(op));
            if (ec) return finish(std::move(op), to_std(ec));
            if (n == 0) return finish(std::move(op), errno_code(EIO));  // no progress: don't spin
            op->consume(n);
            step_write(std::move(op));
        });
    }

    template <class Op>
    void complete_later(std::unique_ptr<Op> op) {
        asio::post(get_executor(), [op = std::move(op)]() mutable { finish(std::move(op), {}); });
    }

    template <class Op>
    static void finish(std::unique_ptr<Op> op, std::error_code ec) {
        auto h = std::move(op->handler);
        const std::size_t done = op->done;
        op.reset();
        std::move(h)(ec, done);
    }

    asio::random_access_file file_;
    pool_io pool_;  // fdatasync / ftruncate, which Asio only offers synchronously
    std::unique_ptr<pool_io> buffered_;
    bool read_only_;
    std::size_t align_;
    file_identity identity_;
};

}  // namespace

std::shared_ptr<block_file> make_uring_file(asio::any_io_executor ex, int fd, bool read_only, int buffered_fd,
                                            std::error_code& ec) {
    if (!io_uring_available()) {
        ec = errno_code(ENOSYS);
        return nullptr;
    }
    try {
        // Creating the first file of an io_context creates Asio's ring; do
        // it on a throw-away object so a failure leaves `fd` with the caller.
        asio::random_access_file probe(ex);
    } catch (const boost::system::system_error& e) {
        ec = to_std(e.code());
        return nullptr;
    }
    return std::make_shared<uring_file>(std::move(ex), fd, read_only, buffered_fd);
}

}  // namespace detail
}  // namespace qed
