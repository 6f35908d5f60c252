// SPDX-License-Identifier: BSL-1.0
// A QED image: the layers below, put together, and the image's own policy.
//
//   table/metadata       the file, header, L1, L2 cache, write-back, allocator
//   cluster/             where guest bytes live; the allocation plan
//   request/             the requests (AIOCBs) and the allocating-write queue
//   check/               consistency check and repair
//   image/ (here)        open (qed_open.cpp), the request gate, the
//                        need-check timer and when NEED_CHECK may go, the
//                        backing file, block status, grow, change backing
//                        file, make empty, close
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <deque>

#include "check/check.hpp"
#include "image/device.hpp"
#include "request/engine.hpp"

namespace qed::detail {

/// A unit of work waiting for the image (move-only, no arguments).
using task = boost::asio::any_completion_handler<void()>;

/// Ownership: shared (device's enable_shared_from_this) by the public image
/// handles, by an image above it in a backing chain, and by operations in
/// flight; everything below is owned by value. Used on its executor only.
class qed_image final : public device, private request_host {
public:
    qed_image(boost::asio::any_io_executor ex, std::shared_ptr<block_file> file, std::string filename,
              open_options options);
    ~qed_image() override;

    /// Open sequence: header, backing name, L1, autoclear, backing chain,
    /// check + repair when dirty. `depth` is this image's level in a chain
    /// and `chain` the identities of the images above it.
    boost::asio::awaitable<std::error_code> open(unsigned depth, std::vector<file_identity> chain);

    // ---- device interface ------------------------------------------------
    image_info info() const override;
    std::uint64_t size() const override { return meta_.hdr().image_size; }
    std::shared_ptr<device> backing() const override { return backing_; }
    bool is_open() const noexcept override { return life_ != lifecycle::closed; }
    void read(std::uint64_t offset, mutable_buffers buffers, io_handler handler) override;
    void write(std::uint64_t offset, const_buffers buffers, write_options options, io_handler handler) override;
    void write_zeroes(std::uint64_t offset, std::uint64_t length, zero_options options, op_handler handler) override;
    void discard(std::uint64_t offset, std::uint64_t length, op_handler handler) override;
    void flush(op_handler handler) override;
    void block_status(std::uint64_t offset, std::uint64_t length, unsigned depth, status_handler handler) override;
    void check(check_options options, check_handler handler) override;
    void change_backing_file(std::string name, std::optional<image_format> format, op_handler handler) override;
    void grow(std::uint64_t new_size, op_handler handler) override;
    void make_empty(op_handler handler) override;
    void close(op_handler handler) override;

private:
    // ---- what requests ask of the image (request/host.hpp) -----------------
    std::optional<std::uint64_t> backing_size() const noexcept override;
    void read_backing(std::uint64_t pos, mutable_buffers buffers, op_handler handler) override;
    void allocations_busy() override { cancel_need_check_timer(); }
    void allocations_idle() override { start_need_check_timer(); }
    void request_done() override;

    // ---- the request gate --------------------------------------------------
    // Requests run concurrently; an exclusive operation (check, grow,
    // change backing file, make empty, close) waits until none are in
    // flight and holds new ones back while it runs. Everything that has to
    // wait takes effect in issue order: a request issued after an exclusive
    // operation runs after it and before any exclusive operation issued
    // later (one FIFO for both kinds).
    template <class F>
    void run_request(F&& f) {
        if (exclusive_running_ || !gate_waiting_.empty()) {
            gate_waiting_.push_back({false, task(std::forward<F>(f))});
            return;
        }
        ++in_flight_;
        std::forward<F>(f)();
    }
    /// Admit a request (open, writes allowed, in bounds) at its turn in the
    /// gate, then `start(keep_alive, handler)`; a refused or empty one
    /// completes with the refusal.
    template <class Handler, class Start>
    void admit_request(bool writes, std::uint64_t offset, std::uint64_t length, Handler handler, Start start);
    /// Run coroutine `op` as an exclusive operation; `done(ec)` gets its result.
    template <class Done>
    void exclusive(boost::asio::awaitable<std::error_code> op, Done done);
    void run_exclusive(task t);
    void exclusive_done();
    /// Start what waits at the gate, in order, as far as it may start now.
    void pump_gate();
    std::shared_ptr<qed_image> self() { return std::static_pointer_cast<qed_image>(shared_from_this()); }

    // ---- NEED_CHECK policy and the timer ------------------------------------
    /// NEED_CHECK may be cleared (close, timer): nothing suggests damage.
    bool may_clear_need_check() const noexcept { return !corrupt_ && !unchecked_dirty_ && !options_.read_only; }
    /// Run a check and apply its verdict: a repair that left the image
    /// consistent clears NEED_CHECK; corruption keeps it set until close.
    boost::asio::awaitable<std::error_code> check_and_apply(check_options::repair mode, check_result& out);
    void start_need_check_timer();
    void cancel_need_check_timer();
    void on_need_check_timer();

    boost::asio::awaitable<std::error_code> do_close();
    boost::asio::awaitable<std::error_code> do_grow(std::uint64_t new_size);
    boost::asio::awaitable<std::error_code> do_change_backing_file(std::string name,
                                                                   std::optional<image_format> format);
    boost::asio::awaitable<std::error_code> do_make_empty();
    boost::asio::awaitable<std::error_code> do_check(check_options options, std::shared_ptr<check_result> out);
    boost::asio::awaitable<std::error_code> do_block_status(std::uint64_t offset, std::uint64_t length, unsigned depth,
                                                            std::shared_ptr<std::vector<extent>> out);
    /// Open the backing chain named by the header (or `name`, `format`) below this image.
    boost::asio::awaitable<std::pair<std::error_code, std::shared_ptr<device>>> open_chain(
        const std::string& path, std::optional<image_format> format, unsigned depth, std::vector<file_identity> chain);

    void log(const std::string& line) const {
        if (options_.log) options_.log(line);
    }

    std::string filename_;
    open_options options_;
    metadata meta_;
    request_engine engine_;
    std::shared_ptr<device> backing_;
    std::string backing_full_;  ///< the backing file name, resolved
    std::optional<image_format> backing_format_;
    /// Check found corruption it could not repair: NEED_CHECK must stay set.
    bool corrupt_ = false;
    /// Opened dirty without a check (repair_on_open off): nobody knows the
    /// image is consistent, so NEED_CHECK must stay until a check says so.
    bool unchecked_dirty_ = false;
    enum class lifecycle { open, closing, closed };
    lifecycle life_ = lifecycle::open;

    boost::asio::steady_timer need_check_timer_;
    bool timer_armed_ = false;
    unsigned in_flight_ = 0;
    bool exclusive_running_ = false;
    struct gate_entry {
        bool exclusive;
        task run;
    };
    std::deque<gate_entry> gate_waiting_;
};

}  // namespace qed::detail
