// SPDX-License-Identifier: BSL-1.0
#include "block_file/uring_file.hpp"

#include "block_file/posix_io.hpp"
#include "block_file/thread_pool_file.hpp"

#include <boost/asio/error.hpp>
#include <boost/asio/random_access_file.hpp>
#include <boost/container/small_vector.hpp>

#include <liburing.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <type_traits>
#include <vector>
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

// Asio 1.81's mixed mode reaps at most 128 completions per eventfd wake-up;
// more than that pending at once and the rest wait for a wake-up that may
// never come. So io_uring operations in flight are capped process-wide, well
// below that, and the rest queue here (each restarted on its own executor).
class uring_budget {
public:
    static uring_budget& instance() {
        static uring_budget b;
        return b;
    }
    /// Run `start` now if there is room, else when an operation finishes.
    template <class Start>
    void acquire(const asio::any_io_executor& ex, Start start) {
        {
            std::lock_guard lock(mutex_);
            if (in_flight_ >= limit) {
                waiting_.emplace_back(ex, asio::any_completion_handler<void()>(std::move(start)));
                return;
            }
            ++in_flight_;
        }
        std::move(start)();
    }
    void release() {
        std::unique_lock lock(mutex_);
        if (waiting_.empty()) {
            --in_flight_;
            return;
        }
        auto [ex, start] = std::move(waiting_.front());  // its unit passes straight on
        waiting_.pop_front();
        lock.unlock();
        asio::post(ex, std::move(start));
    }

private:
    static constexpr int limit = 96;
    std::mutex mutex_;
    int in_flight_ = 0;
    std::deque<std::pair<asio::any_io_executor, asio::any_completion_handler<void()>>> waiting_;
};

std::error_code to_std(const boost::system::error_code& ec) {
    if (!ec) return {};
    if (ec.category() == boost::system::system_category() || ec.category() == boost::system::generic_category())
        return errno_code(ec.value());
    return errno_code(EIO);
}

class uring_file final : public block_file {
public:
    uring_file(asio::any_io_executor ex, int fd, bool read_only, int buffered_fd)
        : ex_(ex),
          fd_(fd),
          pool_(ex, std::make_shared<fd_holder>(::dup(fd))),
          buffered_(buffered_fd >= 0 ? std::make_unique<pool_io>(ex, std::make_shared<fd_holder>(buffered_fd))
                                     : nullptr),
          read_only_(read_only),
          align_(buffered_fd >= 0 ? direct_alignment(fd) : 1),
          identity_(identity_of(fd)) {
        lanes_.push_back(std::make_unique<lane>(ex_, fd));
    }

    executor_type get_executor() const override { return ex_; }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        if (buffered_) {
            auto iov = to_iovecs(buffers);
            if (!is_aligned(offset, iov, align_)) return buffered_->read(offset, std::move(iov), std::move(handler));
        }
        auto op = std::make_unique<transfer<asio::mutable_buffer>>(offset, buffers, std::move(handler));
        if (op->total == 0) return complete_later(std::move(op));  // nothing to submit: never complete inline
        uring_budget::instance().acquire(ex_, [this, op = std::move(op)]() mutable {
            op->on = &take_lane(false);
            step_read(std::move(op));
        });
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
        uring_budget::instance().acquire(ex_, [this, op = std::move(op)]() mutable {
            op->on = &take_lane(true);
            step_write(std::move(op));
        });
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
    // Asio 1.81's io_uring service submits only the first operation of each
    // direction queued on a file object; the rest wait behind it. So the
    // file keeps several objects ("lanes", each on its own dup'ed
    // descriptor), and every transfer takes a lane with nothing in flight in
    // its direction: the queue depth reaches the kernel.
    struct lane {
        lane(const asio::any_io_executor& ex, int fd) : file(ex) { file.assign(fd); }
        asio::random_access_file file;
        unsigned reads = 0, writes = 0;
    };
    static constexpr std::size_t max_lanes = 128;

    lane& take_lane(bool write) {
        lane* best = nullptr;
        for (auto& l : lanes_) {
            const unsigned busy = write ? l->writes : l->reads;
            if (busy == 0) {
                best = l.get();
                break;
            }
            if (!best || busy < (write ? best->writes : best->reads)) best = l.get();
        }
        if ((write ? best->writes : best->reads) != 0 && lanes_.size() < max_lanes) {
            const int fd = ::dup(fd_);
            if (fd >= 0) {
                lanes_.push_back(std::make_unique<lane>(ex_, fd));
                best = lanes_.back().get();
            }
        }
        ++(write ? best->writes : best->reads);
        return *best;
    }

    // One full-length transfer, continued after short reads and writes.
    // Asio submits at most 64 iovecs per operation; the rest follow.
    template <class Buffer>
    struct transfer {
        transfer(std::uint64_t off, std::span<const Buffer> b, io_handler h)
            : offset(off), buffers(b.begin(), b.end()), handler(std::move(h)) {
            for (const auto& x : buffers) total += x.size();
        }
        lane* on = nullptr;
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
        op->on->file.async_read_some_at(at, bufs, [this, op = std::move(op)](boost::system::error_code ec, std::size_t n) mutable {
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
        op->on->file.async_write_some_at(at, bufs, [this, op = std::move(op)](boost::system::error_code ec, std::size_t n) mutable {
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
        if (op->on) {
            if constexpr (std::is_same_v<Op, transfer<asio::const_buffer>>) --op->on->writes;
            else --op->on->reads;
            uring_budget::instance().release();
        }
        auto h = std::move(op->handler);
        const std::size_t done = op->done;
        op.reset();
        std::move(h)(ec, done);
    }

    asio::any_io_executor ex_;
    int fd_;  // owned by the first lane
    std::vector<std::unique_ptr<lane>> lanes_;
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
