// SPDX-License-Identifier: BSL-1.0
// The QED image: request entry points, the request gate, the need-check
// timer and policy, flush, grow, change backing file, make empty, close.
#include "image/qed_image.hpp"

#include <algorithm>
#include <cassert>
#include <type_traits>

#include "block_file/completion.hpp"
#include "image/backing.hpp"
#include "table/co_io.hpp"

namespace qed::detail {

qed_image::qed_image(boost::asio::any_io_executor ex, std::shared_ptr<block_file> file, std::string filename,
                     open_options options)
    : device(ex),
      filename_(std::move(filename)),
      options_(std::move(options)),
      meta_(ex, std::move(file), [this]() -> std::shared_ptr<void> { return shared_from_this(); }),
      engine_(meta_, *this),
      need_check_timer_(ex) {}

qed_image::~qed_image() = default;

// ---------------------------------------------------------------------------
// The request gate
// ---------------------------------------------------------------------------

void qed_image::request_done() {
    assert(in_flight_ > 0);  // every request that finishes was counted in
    --in_flight_;
    if (in_flight_ == 0) pump_gate();
}

void qed_image::run_exclusive(task t) {
    gate_waiting_.push_back({true, std::move(t)});
    pump_gate();
}

void qed_image::exclusive_done() {
    exclusive_running_ = false;
    pump_gate();
}

void qed_image::pump_gate() {
    // Each step re-reads the state: a task may finish (and re-enter here)
    // before it returns.
    while (!exclusive_running_ && !gate_waiting_.empty()) {
        gate_entry& front = gate_waiting_.front();
        if (front.exclusive) {
            if (in_flight_ != 0) return;  // request_done() resumes it
            exclusive_running_ = true;
        } else {
            ++in_flight_;
        }
        task t = std::move(front.run);
        gate_waiting_.pop_front();
        std::move(t)();
    }
}

template <class Done>
void qed_image::exclusive(boost::asio::awaitable<std::error_code> op, Done done) {
    run_exclusive([this, keep = self(), op = std::move(op), done = std::move(done)]() mutable {
        co::run(ex_, std::move(op), [this, keep, done = std::move(done)](std::error_code ec) mutable {
            std::move(done)(ec);
            exclusive_done();
        });
    });
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

std::error_code validate_request(std::uint64_t offset, std::uint64_t length, std::uint64_t image_size) noexcept {
    if (offset % sector_size || length % sector_size) return errc::unaligned_request;
    if (offset > image_size || length > image_size - offset) return errc::out_of_range;
    return {};
}

template <class Handler, class Start>
void qed_image::admit_request(bool writes, std::uint64_t offset, std::uint64_t length, Handler handler, Start start) {
    run_request(
        [this, keep = self(), writes, offset, length, h = std::move(handler), start = std::move(start)]() mutable {
            // The same admission for every kind: a closed image, a write
            // (write, write-zeroes, discard) to a read-only one, then the bounds.
            std::error_code ec;
            if (life_ == lifecycle::closed)
                ec = errc::closed;
            else if (writes && options_.read_only)
                ec = errc::read_only;
            else
                ec = validate_request(offset, length, meta_.hdr().image_size);
            if (!ec && length != 0) return start(std::move(keep), std::move(h));
            if constexpr (std::is_same_v<Handler, io_handler>)
                complete_later(std::move(h), ec, std::size_t{0});
            else
                complete_later(std::move(h), ec);
            request_done();
        });
}

void qed_image::read(std::uint64_t offset, mutable_buffers buffers, io_handler handler) {
    const std::uint64_t len = total_size(buffers);
    admit_request(false, offset, len, std::move(handler),
                  [this, offset, buffers = std::move(buffers)](std::shared_ptr<void> keep, io_handler h) mutable {
                      engine_.read(std::move(keep), offset, std::move(buffers), std::move(h));
                  });
}

void qed_image::write(std::uint64_t offset, const_buffers buffers, write_options options, io_handler handler) {
    const std::uint64_t len = total_size(buffers);
    admit_request(
        true, offset, len, std::move(handler),
        [this, offset, options, buffers = std::move(buffers)](std::shared_ptr<void> keep, io_handler h) mutable {
            engine_.write(std::move(keep), offset, std::move(buffers), options, std::move(h));
        });
}

void qed_image::write_zeroes(std::uint64_t offset, std::uint64_t length, zero_options options, op_handler handler) {
    admit_request(true, offset, length, std::move(handler),
                  [this, offset, length, options](std::shared_ptr<void> keep, op_handler h) mutable {
                      engine_.write_zeroes(std::move(keep), offset, length, options, std::move(h));
                  });
}

void qed_image::discard(std::uint64_t offset, std::uint64_t length, op_handler handler) {
    admit_request(true, offset, length, std::move(handler),
                  [this, offset, length](std::shared_ptr<void> keep, op_handler h) mutable {
                      engine_.discard(std::move(keep), offset, length, std::move(h));
                  });
}

void qed_image::flush(op_handler handler) {
    run_request([this, keep = self(), h = std::move(handler)]() mutable {
        if (life_ == lifecycle::closed) {
            complete_later(std::move(h), make_error_code(errc::closed));
            return request_done();
        }
        meta_.sync(true, [this, keep, h = std::move(h)](std::error_code ec) mutable {
            complete(std::move(h), ec);
            request_done();
        });
    });
}

std::optional<std::uint64_t> qed_image::backing_size() const noexcept {
    if (!backing_) return std::nullopt;
    return backing_->size();
}

void qed_image::read_backing(std::uint64_t pos, mutable_buffers buffers, op_handler handler) {
    backing_->read(pos, std::move(buffers),
                   [h = std::move(handler)](std::error_code ec, std::size_t) mutable { std::move(h)(ec); });
}

// ---------------------------------------------------------------------------
// NEED_CHECK: when it may go, and the timer that clears it
// ---------------------------------------------------------------------------

boost::asio::awaitable<std::error_code> qed_image::check_and_apply(check_options::repair mode, check_result& out) {
    if (auto ec = co_await run_check(meta_, mode, options_.read_only, out)) co_return ec;
    const check_verdict v = verdict_of(out);
    // A repair that leaves the image consistent vouches for it: the bit goes
    // (the check flushed everything it wrote).
    if (mode != check_options::repair::none && !options_.read_only && v == check_verdict::consistent &&
        meta_.hdr().has(feature_need_check)) {
        if (auto ec = co_await meta_.clear_need_check(true)) co_return ec;
        out.need_check_cleared = true;
    }
    // Whatever the mode, known corruption means NEED_CHECK must survive
    // close; a complete check that found none vouches for the image.
    if (v == check_verdict::corrupt) {
        corrupt_ = true;
    } else if (v == check_verdict::consistent) {
        corrupt_ = false;
        unchecked_dirty_ = false;
    }
    co_return std::error_code{};
}

void qed_image::start_need_check_timer() {
    if (life_ != lifecycle::open || !may_clear_need_check() || !meta_.hdr().has(feature_need_check)) return;
    timer_armed_ = true;
    need_check_timer_.expires_after(options_.need_check_timeout);
    std::weak_ptr<device> weak = weak_from_this();
    need_check_timer_.async_wait([weak](boost::system::error_code ec) {
        if (ec) return;  // cancelled
        if (auto image = weak.lock()) static_cast<qed_image&>(*image).on_need_check_timer();
    });
}

void qed_image::cancel_need_check_timer() {
    if (!timer_armed_) return;
    timer_armed_ = false;
    need_check_timer_.cancel();
}

void qed_image::on_need_check_timer() {
    timer_armed_ = false;
    if (life_ != lifecycle::open || !engine_.queue.idle() || !meta_.hdr().has(feature_need_check) ||
        !may_clear_need_check())
        return;
    run_request([this, keep = self()] {
        if (life_ == lifecycle::closed || !engine_.queue.idle() || !meta_.hdr().has(feature_need_check))
            return request_done();
        engine_.queue.plug();  // no allocation may start while the bit goes away
        co::run(ex_, meta_.clear_need_check(false), [this, keep](std::error_code ec) {
            if (ec) log(filename_ + ": could not clear the need-check bit: " + ec.message());
            engine_.queue.unplug();
            request_done();
        });
    });
}

// ---------------------------------------------------------------------------
// Maintenance operations (exclusive)
// ---------------------------------------------------------------------------

void qed_image::check(check_options options, check_handler handler) {
    auto result = std::make_shared<check_result>();
    exclusive(do_check(options, result), [this, result, h = std::move(handler)](std::error_code ec) mutable {
        complete(std::move(h), ec, std::move(*result));
    });
}

boost::asio::awaitable<std::error_code> qed_image::do_check(check_options options,
                                                            std::shared_ptr<check_result> result) {
    if (life_ == lifecycle::closed) co_return errc::closed;
    if (options.mode != check_options::repair::none && options_.read_only) co_return errc::read_only;
    co_return co_await check_and_apply(options.mode, *result);
}

void qed_image::grow(std::uint64_t new_size, op_handler handler) {
    exclusive(do_grow(new_size),
              [this, h = std::move(handler)](std::error_code ec) mutable { complete(std::move(h), ec); });
}

boost::asio::awaitable<std::error_code> qed_image::do_grow(std::uint64_t new_size) {
    const header& hd = meta_.hdr();
    if (life_ == lifecycle::closed) co_return errc::closed;
    if (options_.read_only) co_return errc::read_only;
    if (new_size < hd.image_size) co_return errc::shrink_not_supported;
    if (new_size % sector_size) co_return errc::image_size_unaligned;
    if (new_size > max_image_size(hd.cluster_size, hd.table_size)) co_return errc::image_too_large;
    if (new_size == hd.image_size) co_return std::error_code{};
    // The L1 entries the new size covers come into memory first (the zeroing
    // below and every later request look them up).
    if (auto ec = co_await meta_.cover_size(new_size)) co_return ec;
    // A backing file longer than the image must not show through the new
    // space: guest bytes past the old end were never there, so they read as
    // zeros (QEMU >= 5.1 does the same). The zeroing allocates clusters
    // whose first bytes, below the old end, come from the backing file: an
    // image opened without its chain (metadata tools) opens it for the
    // time being, so those bytes are copied, not lost.
    const std::uint64_t old_size = hd.image_size;
    if (hd.has(feature_backing_file)) {
        std::shared_ptr<device> opened;
        if (!backing_) {
            std::vector<file_identity> above{meta_.file().identity()};
            auto [ec, dev] = co_await open_chain(backing_full_, backing_format_, 1, std::move(above));
            if (ec) co_return ec;
            opened = dev;
            backing_ = std::move(dev);
        }
        const std::uint64_t end = std::min(new_size, backing_->size());
        std::error_code ec;
        if (end > old_size) {
            qed_image* image = this;
            const std::uint64_t off = old_size, len = end - old_size;
            ec = co_await co::op([image, off, len](op_handler h) {
                ++image->in_flight_;  // an internal request inside this exclusive operation
                image->engine_.write_zeroes(image->self(), off, len, zero_options{}, std::move(h));
            });
            if (!ec) ec = co_await meta_.sync_co(true);  // zeros durable before the size grows
        }
        if (opened) {
            backing_.reset();
            device* d = opened.get();
            co_await co::op([d](op_handler h) { d->close(std::move(h)); });
        }
        if (ec) co_return ec;
    }
    header grown = meta_.hdr();
    grown.image_size = new_size;
    if (auto ec = co_await meta_.write_header_co(grown)) co_return ec;
    co_return co_await co::flush(meta_.file());
}

boost::asio::awaitable<std::pair<std::error_code, std::shared_ptr<device>>> qed_image::open_chain(
    const std::string& path, std::optional<image_format> format, unsigned depth, std::vector<file_identity> chain) {
    co_return co_await open_backing_chain(ex_, path, format, options_, depth, std::move(chain));
}

void qed_image::change_backing_file(std::string name, std::optional<image_format> format, op_handler handler) {
    exclusive(do_change_backing_file(std::move(name), format),
              [this, h = std::move(handler)](std::error_code ec) mutable { complete(std::move(h), ec); });
}

boost::asio::awaitable<std::error_code> qed_image::do_change_backing_file(std::string name,
                                                                          std::optional<image_format> format) {
    if (life_ == lifecycle::closed) co_return errc::closed;
    if (options_.read_only) co_return errc::read_only;
    if (auto ec = meta_.check_backing_name(name)) co_return ec;

    // Open the new chain first: a missing or looping backing file is
    // refused before anything on disk changes.
    std::shared_ptr<device> new_backing;
    const std::string full = name.empty() ? std::string{} : resolve_backing_path(filename_, name);
    if (!name.empty() && options_.open_backing) {
        std::vector<file_identity> above{meta_.file().identity()};
        auto [ec, dev] = co_await open_chain(full, format, 1, std::move(above));
        if (ec) co_return ec;
        new_backing = std::move(dev);
    }
    if (auto ec = co_await meta_.write_backing_name(name, format == image_format::raw)) co_return ec;

    auto old = std::move(backing_);
    backing_ = std::move(new_backing);
    backing_full_ = full;
    backing_format_ = name.empty() ? std::nullopt : format;
    if (old) {
        device* d = old.get();
        co_await co::op([d](op_handler done) { d->close(std::move(done)); });
    }
    co_return std::error_code{};
}

void qed_image::make_empty(op_handler handler) {
    exclusive(do_make_empty(),
              [this, h = std::move(handler)](std::error_code ec) mutable { complete(std::move(h), ec); });
}

boost::asio::awaitable<std::error_code> qed_image::do_make_empty() {
    if (life_ == lifecycle::closed) co_return errc::closed;
    if (options_.read_only) co_return errc::read_only;
    co_return co_await meta_.unlink_all();
}

void qed_image::close(op_handler handler) {
    if (life_ != lifecycle::open) {
        complete_later(std::move(handler), make_error_code(errc::closed));
        return;
    }
    life_ = lifecycle::closing;
    exclusive(do_close(), [this, h = std::move(handler)](std::error_code ec) mutable { complete(std::move(h), ec); });
}

boost::asio::awaitable<std::error_code> qed_image::do_close() {
    cancel_need_check_timer();
    std::error_code first;
    auto keep = [&first](std::error_code ec) {
        if (ec && !first) first = ec;
        return ec;
    };
    if (!options_.read_only && !keep(co_await meta_.sync_co(true))) {
        // Drop what failed allocations left past the last cluster.
        cluster_allocator& alloc = meta_.alloc();
        if (alloc.tail_garbage() && alloc.physical_size() > alloc.end() && !meta_.file().fixed_size() &&
            !keep(co_await co::resize(meta_.file(), alloc.end())))
            alloc.trimmed(true);
        // Clean shutdown: no check needed next time -- unless a check found
        // corruption it could not repair.
        if (meta_.hdr().has(feature_need_check) && may_clear_need_check()) keep(co_await meta_.clear_need_check(true));
    }
    if (backing_) {
        auto owner = backing_;
        device* d = owner.get();
        keep(co_await co::op([d](op_handler done) { d->close(std::move(done)); }));
    }
    {
        // A file that is itself an image (a nested format) is closed as one.
        block_file* f = &meta_.file();
        keep(co_await co::op([f](op_handler done) { f->async_close(std::move(done)); }));
    }
    life_ = lifecycle::closed;
    meta_.cache().clear_unused();
    // Let go of the file now, not when the last handle goes: that closes
    // the descriptor and so drops the image locks (operations still in
    // flight in a backend hold the descriptor themselves; none are left).
    meta_.release_file();
    co_return first;
}

// ---------------------------------------------------------------------------
// Info
// ---------------------------------------------------------------------------

image_info qed_image::info() const {
    const header& h = meta_.hdr();
    image_info i;
    i.filename = filename_;
    i.format = image_format::qed;
    i.virtual_size = h.image_size;
    std::error_code ec;
    i.file_size = meta_.has_file() ? meta_.file().size(ec) : 0;
    i.read_only = options_.read_only;
    i.backend = meta_.has_file() ? meta_.file().backend_name() : "";
    i.cluster_size = h.cluster_size;
    i.table_size = h.table_size;
    i.header_size = h.header_size;
    i.l1_table_offset = h.l1_table_offset;
    i.features = h.features;
    i.compat_features = h.compat_features;
    i.autoclear_features = h.autoclear_features;
    i.need_check = h.has(feature_need_check);
    i.request_alignment = sector_size;
    i.backing_file = meta_.backing_name();
    i.backing_file_full = backing_full_;
    i.backing_format = backing_format_;
    for (auto b = backing_; b; b = b->backing()) ++i.chain_depth;
    return i;
}

}  // namespace qed::detail
