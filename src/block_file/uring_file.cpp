// SPDX-License-Identifier: BSL-1.0
// The io_uring backend on liburing: one ring per io_context.
//
// How a request travels (the model is QEMU's block/io_uring.c):
//  1. The file builds an `op` (the whole scatter-gather list, the handler)
//     and hands it to the ring. From the ring's own strand it goes straight
//     onto the pending queue; from anywhere else it is pushed onto a
//     lock-free intake stack, and the first push since the last submission
//     posts one "pass" to the strand. The pass runs after the handlers that
//     are already queued, so every request they start goes into the same
//     io_uring_enter: one submission per turn of the loop.
//  2. A pass moves pending ops into SQEs (submitting early only when the SQ
//     ring is full; ops beyond the CQ ring's size wait in the queue),
//     submits once, and reaps whatever already completed (cached pages
//     complete inside io_uring_enter) before it waits.
//  3. The ring signals an eventfd for every completion; the io_context's
//     reactor reads it through a posix::stream_descriptor, and each wake-up
//     reaps every completion there is in one pass (io_uring_peek_batch_cqe).
//     A transfer that came back short, or with -EAGAIN/-EINTR, goes back on
//     the pending queue for the rest; a finished one runs its handler on the
//     file's executor (inline when that is the io_context itself).
//
// The eventfd read is armed only while operations are in flight, so
// io_context::run() returns when the I/O is done, as with any Asio object.
// Ring state is touched only on the strand (or by shutdown, when nothing
// runs): no mutex on the submission path. A mutex guards the registered-file
// slots, used when a file is opened or closed.
#include "block_file/uring_file.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <vector>

#include "block_file/posix_io.hpp"
#include "block_file/thread_pool_file.hpp"
#include "qed/error.hpp"

namespace qed {
namespace detail {
namespace {

namespace asio = boost::asio;

// Submission queue entries per ring (QEMU uses 128). The completion queue
// gets twice as many, and at most that many operations are in the kernel at
// once, so completions never overflow.
constexpr unsigned ring_entries = 256;
// Registered-file slots per ring; files past that use plain descriptors.
constexpr unsigned file_slots = 1024;

std::string describe(const char* what, int err) {
    return std::string(what) + ": " + std::strerror(err);
}

/// Whether this process can use io_uring at all, and why not (probed once).
struct probe_result {
    int error = 0;    ///< errno, 0 when usable
    std::string why;  ///< for the log line
    bool fallocate = false;
};

const probe_result& probe() {
    static const probe_result result = [] {
        probe_result p;
        ::io_uring ring{};
        if (const int r = ::io_uring_queue_init(ring_entries, &ring, 0); r < 0) {
            p.error = -r;
            p.why = describe("io_uring_setup",
                             -r);  // ENOSYS: old kernel; EPERM: seccomp or io_uring_disabled; ENOMEM: RLIMIT_MEMLOCK
            return p;
        }
        ::io_uring_probe* ops = ::io_uring_get_probe_ring(&ring);
        if (!ops) {
            p.error = ENOSYS;
            p.why = "kernel too old (no io_uring opcode probe, before Linux 5.6)";
        } else {
            static const std::pair<int, const char*> needed[] = {{IORING_OP_READV, "READV"},
                                                                 {IORING_OP_WRITEV, "WRITEV"},
                                                                 {IORING_OP_READ, "READ"},
                                                                 {IORING_OP_WRITE, "WRITE"},
                                                                 {IORING_OP_FSYNC, "FSYNC"}};
            for (const auto& [op, name] : needed) {
                if (!::io_uring_opcode_supported(ops, op)) {
                    p.error = ENOSYS;
                    p.why = std::string("kernel lacks IORING_OP_") + name;
                    break;
                }
            }
            p.fallocate = ::io_uring_opcode_supported(ops, IORING_OP_FALLOCATE);
            ::io_uring_free_probe(ops);
        }
        ::io_uring_queue_exit(&ring);
        return p;
    }();
    return result;
}

class uring_service;

/// One request in the ring: prepared into an SQE, completed from its CQE.
struct op {
    virtual ~op() = default;
    virtual void prep(::io_uring_sqe* sqe) = 0;
    /// The kernel's result. Either finishes (runs the handler, deletes
    /// this) or puts the op back on the pending queue for the rest.
    virtual void complete(int res, uring_service& ring) = 0;
    op* next = nullptr;  // intake stack link
};

/// What outlives the io_context: the ring itself, while files still use it.
struct ring_state {
    ::io_uring ring{};
    int event_fd = -1;
    bool initialised = false;  ///< io_uring_queue_init succeeded
    bool registered_files = false;
    bool fallocate = false;
    std::atomic<op*> intake{nullptr};
    std::atomic<bool> pass_posted{false};
    std::atomic<uring_service*> service{nullptr};  // null once the io_context has shut down
    std::mutex slots_mutex;
    std::vector<int> free_slots;

    ~ring_state() {
        if (initialised) ::io_uring_queue_exit(&ring);  // also drops the registered files
        if (event_fd >= 0) ::close(event_fd);
    }

    /// A registered-file slot for `fd`, or -1 (then the plain descriptor is used).
    int register_fd(int fd) {
        if (!registered_files) return -1;
        std::lock_guard lock(slots_mutex);
        if (free_slots.empty()) return -1;
        const int slot = free_slots.back();
        if (::io_uring_register_files_update(&ring, static_cast<unsigned>(slot), &fd, 1) != 1) return -1;
        free_slots.pop_back();
        return slot;
    }
    void unregister(int slot) {
        std::lock_guard lock(slots_mutex);
        int none = -1;
        if (::io_uring_register_files_update(&ring, static_cast<unsigned>(slot), &none, 1) == 1)
            free_slots.push_back(slot);
    }

    void start(op* o);
};

/// A descriptor as the ring sees it: a registered slot when there is one.
/// Operations in flight hold it, so the descriptor outlives them.
struct ring_fd {
    ring_fd(std::shared_ptr<ring_state> r, int f)
        : ring(std::move(r)), fd(f), slot(ring->register_fd(f)), buffered(!(::fcntl(f, F_GETFL) & O_DIRECT)) {}
    ~ring_fd() {
        if (slot >= 0) ring->unregister(slot);
        ::close(fd);
    }
    ring_fd(const ring_fd&) = delete;
    ring_fd& operator=(const ring_fd&) = delete;
    void set(::io_uring_sqe* sqe) const {
        if (slot >= 0) {
            sqe->fd = slot;
            sqe->flags |= IOSQE_FIXED_FILE;
        }
    }
    std::shared_ptr<ring_state> ring;
    int fd;
    int slot;
    // Buffered transfers go to io-wq at once (IOSQE_ASYNC) instead of being
    // tried inline first: cached reads then copy on io_uring's workers, in
    // parallel, rather than one by one inside io_uring_enter, and writes
    // that would wait for a page under writeback don't stall the loop.
    // Measured (bench/README.md): 2-3x faster cached random reads than the
    // thread pool, and faster than plain io_uring for reads and overwrites.
    bool buffered;
};

class uring_service final : public asio::io_context::service {
public:
    static asio::io_context::id id;

    explicit uring_service(asio::io_context& ioc) : service(ioc), strand_(asio::make_strand(ioc)) {
        if (probe().error) {
            error_ = errno_code(probe().error);
            why_ = probe().why;
            return;
        }
        auto r = std::make_shared<ring_state>();
        ::io_uring_params params{};
        params.flags = IORING_SETUP_CQSIZE;
        params.cq_entries = 2 * ring_entries;
        if (const int e = ::io_uring_queue_init_params(ring_entries, &r->ring, &params); e < 0) {
            error_ = errno_code(-e);
            why_ = describe("io_uring_setup", -e);  // e.g. ENOMEM: RLIMIT_MEMLOCK on kernels before 5.12
            return;
        }
        r->initialised = true;
        cq_limit_ = params.cq_entries;
        r->event_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (r->event_fd < 0) {
            error_ = errno_code(errno);
            why_ = describe("eventfd", errno);
            return;  // r's destructor exits the ring
        }
        if (const int e = ::io_uring_register_eventfd(&r->ring, r->event_fd); e < 0) {
            error_ = errno_code(-e);
            why_ = describe("io_uring_register_eventfd", -e);
            return;  // r's destructor exits the ring and closes the eventfd
        }
        // Registered files (Linux 5.19 for a sparse table): each operation
        // then skips the descriptor table lookup. Without them, plain fds.
        if (::io_uring_register_files_sparse(&r->ring, file_slots) == 0) {
            r->registered_files = true;
            for (int s = static_cast<int>(file_slots); s-- > 0;) r->free_slots.push_back(s);
        }
        r->fallocate = probe().fallocate;
        try {
            wake_.emplace(ioc, r->event_fd);
        } catch (const boost::system::system_error& e) {
            error_ = errno_code(e.code().value());
            why_ = std::string("eventfd in the reactor: ") + e.what();
            return;
        }
        r->service.store(this);
        ring_ = std::move(r);
    }

    const std::shared_ptr<ring_state>& ring() const noexcept { return ring_; }
    std::error_code error() const noexcept { return error_; }
    const std::string& why() const noexcept { return why_; }

    /// Queue `o` for submission (called on any thread, or from the strand).
    void start(op* o) {
        if (strand_.running_in_this_thread()) {
            pending_.push_back(o);  // this pass submits it before it returns
            return;
        }
        op* head = ring_->intake.load(std::memory_order_relaxed);
        do {
            o->next = head;
        } while (!ring_->intake.compare_exchange_weak(head, o, std::memory_order_release, std::memory_order_relaxed));
        if (!ring_->pass_posted.exchange(true, std::memory_order_acq_rel)) post_pass();
    }

    /// From a completion on the strand: submit the rest in this pass.
    void again(op* o) { pending_.push_back(o); }

private:
    void post_pass() {
        asio::post(strand_, [this] { pass(); });
    }

    // Everything the ring does happens here, on the strand.
    void pass() {
        ring_->pass_posted.store(false, std::memory_order_release);
        const int unwinding = std::uncaught_exceptions();
        struct on_throw {  // a handler threw out of reap(): finish the rest in another pass
            uring_service* s;
            int before;
            ~on_throw() {
                if (std::uncaught_exceptions() > before) s->post_pass();
            }
        } guard{this, unwinding};
        take_intake();
        reap();
        submit();
        reap();  // cached pages complete inside io_uring_enter: no wake-up needed for them
        submit();
        arm();
    }

    void take_intake() {
        op* list = ring_->intake.exchange(nullptr, std::memory_order_acquire);
        op* fifo = nullptr;  // the stack is newest first
        while (list) {
            op* n = list->next;
            list->next = fifo;
            fifo = list;
            list = n;
        }
        for (; fifo; fifo = fifo->next) pending_.push_back(fifo);
    }

    void submit() {
        ::io_uring* ring = &ring_->ring;
        while (!pending_.empty() && in_flight_ < cq_limit_) {
            ::io_uring_sqe* sqe = ::io_uring_get_sqe(ring);
            if (!sqe) {  // SQ ring full: submit what is there and go on
                if (!enter()) return;
                sqe = ::io_uring_get_sqe(ring);
                if (!sqe) return;
            }
            op* o = pending_.front();
            pending_.pop_front();
            o->prep(sqe);
            ::io_uring_sqe_set_data(sqe, o);
            ++in_flight_;
        }
        if (::io_uring_sq_ready(ring)) enter();
    }

    // One io_uring_enter. False when the kernel took nothing: -EAGAIN or
    // -EBUSY (short of memory, or completions to reap first) leave the SQEs
    // in the ring for the next pass, which is posted now in case nothing is
    // in flight to wake us.
    bool enter() {
        const int r = ::io_uring_submit(&ring_->ring);
        if (r >= 0) return true;
        if (r != -EINTR && !ring_->pass_posted.exchange(true)) post_pass();
        return r == -EINTR;
    }

    void reap() {
        ::io_uring_cqe* cqes[64];
        for (;;) {
            const unsigned n = ::io_uring_peek_batch_cqe(&ring_->ring, cqes, 64);
            if (n == 0) return;
            for (unsigned i = 0; i < n; ++i)
                done_.emplace_back(static_cast<op*>(::io_uring_cqe_get_data(cqes[i])), cqes[i]->res);
            ::io_uring_cq_advance(&ring_->ring, n);
            in_flight_ -= n;
            while (!done_.empty()) {  // popped first: a handler that throws leaves the rest queued
                auto [o, res] = done_.front();
                done_.pop_front();
                o->complete(res, *this);
            }
            if (n < 64) return;
        }
    }

    // Wait for the eventfd while anything is in the kernel. A read (not a
    // plain readiness wait) both clears the counter and is tried at once
    // when started: a completion that signalled it after the last reap is
    // never missed.
    void arm() {
        if (armed_ || in_flight_ == 0) return;
        armed_ = true;
        wake_->async_read_some(asio::buffer(&wake_count_, sizeof wake_count_),
                               asio::bind_executor(strand_, [this](const boost::system::error_code& ec, std::size_t) {
                                   armed_ = false;
                                   if (ec == asio::error::operation_aborted) return;
                                   pass();
                               }));
    }

    // The io_context is going away: no handler runs any more. Operations
    // not yet submitted are dropped (their handlers destroyed, as Asio does
    // with its own); those in the kernel are waited for, since the kernel
    // still writes to their buffers.
    void shutdown() override {
        if (!ring_) return;
        ring_->service.store(nullptr);
        take_intake();
        auto drop = [](op* o) { delete o; };
        while (!pending_.empty()) {
            op* o = pending_.front();
            pending_.pop_front();
            drop(o);
        }
        while (!done_.empty()) {
            op* o = done_.front().first;
            done_.pop_front();
            drop(o);
        }
        ::io_uring_submit(&ring_->ring);
        while (in_flight_ > 0) {
            ::io_uring_cqe* cqe = nullptr;
            const int r = ::io_uring_wait_cqe(&ring_->ring, &cqe);
            if (r == -EINTR) continue;
            if (r < 0) break;  // can't happen with a live ring; the ring's exit cancels the rest
            op* o = static_cast<op*>(::io_uring_cqe_get_data(cqe));
            ::io_uring_cqe_seen(&ring_->ring, cqe);
            --in_flight_;
            drop(o);
        }
        take_intake();  // handlers destroyed above may have started more; they never run
        while (!pending_.empty()) {
            op* o = pending_.front();
            pending_.pop_front();
            drop(o);
        }
        if (wake_) {
            wake_->release();  // the ring state closes the eventfd
            wake_.reset();
        }
    }

    asio::strand<asio::io_context::executor_type> strand_;
    std::shared_ptr<ring_state> ring_;
    std::error_code error_;
    std::string why_;
    std::optional<asio::posix::stream_descriptor> wake_;
    std::uint64_t wake_count_ = 0;
    bool armed_ = false;
    unsigned in_flight_ = 0;  // SQEs prepared and not reaped
    unsigned cq_limit_ = 2 * ring_entries;
    std::deque<op*> pending_;
    std::deque<std::pair<op*, int>> done_;
};

asio::io_context::id uring_service::id;

void ring_state::start(op* o) {
    uring_service* s = service.load(std::memory_order_acquire);
    if (!s) {  // the io_context has shut down: its handlers never run
        delete o;
        return;
    }
    s->start(o);
}

/// Runs `h(args...)` on `ex`: inline when the caller is already there.
template <class Handler, class... Args>
void deliver(const asio::any_io_executor& ex, Handler h, Args... args) {
    asio::dispatch(ex, [h = std::move(h), args...]() mutable { std::move(h)(args...); });
}

// One whole transfer: the full iovec list in one SQE (up to IOV_MAX at a
// time), continued after short transfers.
// Ownership: created by the file, owned by the ring while in flight; deletes
// itself once its handler is handed over.
template <bool Write>
struct transfer_op final : op {
    transfer_op(std::shared_ptr<ring_fd> f, asio::any_io_executor e, std::uint64_t off, iovec_list v, io_handler h)
        : fd(std::move(f)), ex(std::move(e)), offset(off), iov(std::move(v)), handler(std::move(h)) {}

    void prep(::io_uring_sqe* sqe) override {
        const std::uint64_t at = offset + done;
        if (iov.size() == 1) {
            // Linux moves at most 2 GiB - 4 KiB per call anyway; the rest follows.
            const auto len = static_cast<unsigned>(std::min<std::size_t>(iov[0].iov_len, 1u << 30));
            if constexpr (Write)
                ::io_uring_prep_write(sqe, fd->fd, iov[0].iov_base, len, at);
            else
                ::io_uring_prep_read(sqe, fd->fd, iov[0].iov_base, len, at);
        } else {
            const auto n = static_cast<unsigned>(std::min<std::size_t>(iov.size(), IOV_MAX));
            if constexpr (Write)
                ::io_uring_prep_writev(sqe, fd->fd, iov.data(), n, at);
            else
                ::io_uring_prep_readv(sqe, fd->fd, iov.data(), n, at);
        }
        fd->set(sqe);
        if (fd->buffered) sqe->flags |= IOSQE_ASYNC;
    }

    void complete(int res, uring_service& ring) override {
        if (res == -EAGAIN || res == -EINTR) return ring.again(this);
        if (res < 0) return finish(errno_code(-res));
        if (res == 0) {
            if constexpr (Write) {
                return finish(errno_code(EIO));  // no progress: don't spin
            } else {
                zero_fill(iov);  // past the end of the file: the rest reads as zeros
                done += total_size(iov);
                return finish({});
            }
        }
        done += static_cast<std::size_t>(res);
        consume(iov, static_cast<std::size_t>(res));
        if (iov.empty()) return finish({});
        ring.again(this);  // short: the rest
    }

    void finish(std::error_code ec) {
        auto h = std::move(handler);
        auto e = std::move(ex);
        const std::size_t n = done;
        delete this;
        deliver(e, std::move(h), ec, n);
    }

    std::shared_ptr<ring_fd> fd;
    asio::any_io_executor ex;
    std::uint64_t offset;
    iovec_list iov;
    io_handler handler;
    std::size_t done = 0;
};

// fdatasync, or fallocate, as one ring operation.
// Ownership: as transfer_op (the ring holds it in flight; it deletes itself).
struct sync_op final : op {
    enum kind { datasync, punch };
    sync_op(kind k_, std::shared_ptr<ring_fd> f, asio::any_io_executor e, op_handler h, std::uint64_t off = 0,
            std::uint64_t len = 0)
        : k(k_), fd(std::move(f)), ex(std::move(e)), handler(std::move(h)), offset(off), length(len) {}

    void prep(::io_uring_sqe* sqe) override {
        if (k == datasync)
            ::io_uring_prep_fsync(sqe, fd->fd, IORING_FSYNC_DATASYNC);
        else
            ::io_uring_prep_fallocate(sqe, fd->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                      static_cast<off_t>(offset), static_cast<off_t>(length));
        fd->set(sqe);
    }
    void complete(int res, uring_service& ring) override {
        if (res == -EINTR || res == -EAGAIN) return ring.again(this);
        std::error_code ec;
        struct stat st {};
        if (res == -EINVAL && k == datasync && ::fstat(fd->fd, &st) == 0 && !S_ISREG(st.st_mode)) {
            // A special file (a character device such as /dev/null) has
            // nothing to synchronize, as the thread pool's flush also says.
        } else if (res < 0) {
            ec = (k == punch && (res == -EOPNOTSUPP || res == -ENOSYS)) ? make_error_code(errc::not_supported)
                                                                        : errno_code(-res);
        }
        auto h = std::move(handler);
        auto e = std::move(ex);
        delete this;
        deliver(e, std::move(h), ec);
    }

    kind k;
    std::shared_ptr<ring_fd> fd;
    asio::any_io_executor ex;
    op_handler handler;
    std::uint64_t offset, length;
};

// Ownership: shared by whoever opened it (an image's metadata); its ring is
// the io_context's, shared by every file on that context.
class uring_file final : public block_file {
public:
    uring_file(asio::any_io_executor ex, std::shared_ptr<ring_state> ring, int fd, int pool_fd, bool read_only,
               int buffered_fd)
        : ex_(std::move(ex)),
          ring_(std::move(ring)),
          fd_(std::make_shared<ring_fd>(ring_, fd)),
          buffered_(buffered_fd >= 0 ? std::make_shared<ring_fd>(ring_, buffered_fd) : nullptr),
          pool_(ex_, std::make_shared<fd_holder>(pool_fd)),
          read_only_(read_only),
          align_(buffered_fd >= 0 ? direct_alignment(fd) : 1),
          identity_(identity_of(fd)) {}

    executor_type get_executor() const override { return ex_; }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        transfer<false>(offset, to_iovecs(buffers), std::move(handler));
    }

    void async_write_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                        io_handler handler) override {
        if (read_only_) {
            asio::post(ex_, [h = std::move(handler)]() mutable { std::move(h)(errno_code(EBADF), 0); });
            return;
        }
        transfer<true>(offset, to_iovecs(buffers), std::move(handler));
    }

    void async_flush(op_handler handler) override {
        ring_->start(new sync_op(sync_op::datasync, fd_, ex_, std::move(handler)));
    }
    // ftruncate has no ring operation before Linux 6.9 (nor in liburing 2.3): the pool.
    void async_resize(std::uint64_t size, op_handler handler) override {
        if (read_only_) {
            asio::post(ex_, [h = std::move(handler)]() mutable { std::move(h)(errno_code(EBADF)); });
            return;
        }
        pool_.resize(size, std::move(handler));
    }
    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        if (read_only_) return block_file::async_punch_hole(offset, length, std::move(handler));
        if (!ring_->fallocate) return pool_.punch_hole(offset, length, std::move(handler));
        ring_->start(new sync_op(sync_op::punch, fd_, ex_, std::move(handler), offset, length));
    }
    std::uint64_t size(std::error_code& ec) const override { return file_size(fd_->fd, ec); }
    std::size_t alignment() const noexcept override { return align_; }
    std::error_code allocation(std::uint64_t offset, std::uint64_t length, bool& data,
                               std::uint64_t& run) const override {
        return seek_allocation(fd_->fd, offset, length, data, run);
    }
    file_identity identity() const noexcept override { return identity_; }
    bool read_only() const noexcept override { return read_only_; }
    const char* backend_name() const noexcept override { return "io_uring"; }

private:
    template <bool Write>
    void transfer(std::uint64_t offset, iovec_list iov, io_handler handler) {
        if (iov.empty()) {  // nothing to submit; still never complete inline
            asio::post(ex_, [h = std::move(handler)]() mutable { std::move(h)(std::error_code{}, 0); });
            return;
        }
        // O_DIRECT transfers that break the alignment rules go through the
        // buffered descriptor; Linux keeps the two coherent.
        const auto& fd = buffered_ && !is_aligned(offset, iov, align_) ? buffered_ : fd_;
        ring_->start(new transfer_op<Write>(fd, ex_, offset, std::move(iov), std::move(handler)));
    }

    asio::any_io_executor ex_;
    std::shared_ptr<ring_state> ring_;
    std::shared_ptr<ring_fd> fd_;
    std::shared_ptr<ring_fd> buffered_;
    pool_io pool_;  // ftruncate, and fallocate on kernels without it in the ring
    bool read_only_;
    std::size_t align_;
    file_identity identity_;
};

/// The io_context behind an io_context executor or a strand of one.
asio::io_context* io_context_of(const asio::any_io_executor& ex) {
    if (const auto* e = ex.target<asio::io_context::executor_type>()) return &asio::query(*e, asio::execution::context);
    if (const auto* s = ex.target<asio::strand<asio::io_context::executor_type>>())
        return &asio::query(s->get_inner_executor(), asio::execution::context);
    return nullptr;
}

}  // namespace

std::shared_ptr<block_file> make_uring_file(asio::any_io_executor ex, int fd, bool read_only, int buffered_fd,
                                            std::error_code& ec, std::string& why) {
    if (probe().error) {
        ec = errno_code(probe().error);
        why = probe().why;
        return nullptr;
    }
    auto* ioc = io_context_of(ex);
    if (!ioc) {
        ec = make_error_code(errc::not_supported);
        why = "the executor is not an io_context's";
        return nullptr;
    }
    auto& service = asio::use_service<uring_service>(*ioc);
    if (!service.ring()) {
        ec = service.error();
        why = service.why();
        return nullptr;
    }
    const int pool_fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (pool_fd < 0) {
        ec = errno_code(errno);
        why = describe("dup", errno);
        return nullptr;
    }
    return std::make_shared<uring_file>(std::move(ex), service.ring(), fd, pool_fd, read_only, buffered_fd);
}

}  // namespace detail

bool io_uring_available() noexcept {
    return detail::probe().error == 0;
}

}  // namespace qed
