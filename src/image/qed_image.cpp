// SPDX-License-Identifier: BSL-1.0
// The QED image: request entry points, the request gate, header updates,
// the need-check timer, flush, grow, change backing file, make empty, close.
#include "image/qed_image.hpp"

#include "image/backing.hpp"
#include "table/co_io.hpp"
#include "request/aiocb.hpp"

#include <algorithm>
#include <cstring>

namespace qed::detail {

qed_image::qed_image(boost::asio::any_io_executor ex, std::shared_ptr<block_file> file, std::string filename,
                     open_options options)
    : device(ex),
      file_(std::move(file)),
      filename_(std::move(filename)),
      options_(std::move(options)),
      cache_(options_.l2_cache_size),
      alloc_queue_(*this),
      writeback_(ex),
      need_check_timer_(ex) {}

qed_image::~qed_image() = default;

// ---------------------------------------------------------------------------
// The request gate
// ---------------------------------------------------------------------------

void qed_image::request_done() {
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

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

std::error_code validate_request(std::uint64_t offset, std::uint64_t length, std::uint64_t image_size) noexcept {
    if (offset % sector_size || length % sector_size) return errc::unaligned_request;
    if (offset > image_size || length > image_size - offset) return errc::out_of_range;
    return {};
}

// Admission of one request, the same for every kind: a closed image, a
// write (write, write-zeroes, discard) to a read-only one, then the bounds.
static std::error_code admit(bool closed, bool refuse_writes, std::uint64_t offset, std::uint64_t length,
                             std::uint64_t image_size) noexcept {
    if (closed) return make_error_code(errc::closed);
    if (refuse_writes) return make_error_code(errc::read_only);
    return validate_request(offset, length, image_size);
}

namespace {
std::shared_ptr<qed_image> self_of(qed_image* p) {
    return std::static_pointer_cast<qed_image>(p->shared_from_this());
}
}  // namespace

void qed_image::read(std::uint64_t offset, mutable_buffers buffers, io_handler handler) {
    run_request([this, self = self_of(this), offset, buffers = std::move(buffers), h = std::move(handler)]() mutable {
        const std::error_code ec = admit(closed_, false, offset, total_size(buffers), header_.image_size);
        if (ec || buffers.empty()) {
            complete_later(std::move(h), ec, std::size_t{0});
            return request_done();
        }
        aiocb::start_read(std::move(self), offset, std::move(buffers), std::move(h));
    });
}

void qed_image::write(std::uint64_t offset, const_buffers buffers, write_options options, io_handler handler) {
    run_request([this, self = self_of(this), offset, buffers = std::move(buffers), options,
                 h = std::move(handler)]() mutable {
        const std::error_code ec =
            admit(closed_, options_.read_only, offset, total_size(buffers), header_.image_size);
        if (ec || buffers.empty()) {
            complete_later(std::move(h), ec, std::size_t{0});
            return request_done();
        }
        aiocb::start_write(std::move(self), offset, std::move(buffers), options, std::move(h));
    });
}

void qed_image::write_zeroes(std::uint64_t offset, std::uint64_t length, zero_options options, op_handler handler) {
    run_request([this, self = self_of(this), offset, length, options, h = std::move(handler)]() mutable {
        const std::error_code ec = admit(closed_, options_.read_only, offset, length, header_.image_size);
        if (ec || length == 0) {
            complete_later(std::move(h), ec);
            return request_done();
        }
        aiocb::start_write_zeroes(std::move(self), offset, length, options, std::move(h));
    });
}

void qed_image::discard(std::uint64_t offset, std::uint64_t length, op_handler handler) {
    run_request([this, self = self_of(this), offset, length, h = std::move(handler)]() mutable {
        const std::error_code ec = admit(closed_, options_.read_only, offset, length, header_.image_size);
        if (ec || length == 0) {
            complete_later(std::move(h), ec);
            return request_done();
        }
        aiocb::start_discard(std::move(self), offset, length, std::move(h));
    });
}

void qed_image::flush(op_handler handler) {
    run_request([this, self = self_of(this), h = std::move(handler)]() mutable {
        if (closed_) {
            complete_later(std::move(h), make_error_code(errc::closed));
            return request_done();
        }
        sync([this, self, h = std::move(h)](std::error_code ec) mutable {
            complete(std::move(h), ec);
            request_done();
        });
    });
}

boost::asio::awaitable<std::error_code> qed_image::sync_co(bool durable) {
    co_return co_await co::op([this, durable](op_handler h) { writeback_.sync(durable, std::move(h)); });
}

bool qed_image::read_backing(std::uint64_t pos, const mutable_buffers& buffers, op_handler handler) {
    const std::uint64_t len = total_size(buffers);
    if (!backing_) {
        if (header_.has(feature_backing_file)) {
            // Opened without its backing file (metadata-only use): we can't
            // know these bytes, so don't make them up.
            boost::asio::post(ex_, [h = std::move(handler)]() mutable {
                std::move(h)(make_error_code(errc::backing_file_missing));
            });
            return true;
        }
        for (const auto& b : buffers) std::memset(b.data(), 0, b.size());
        return false;
    }
    // The backing file may be shorter than this image: zeros past its end.
    const std::uint64_t bsize = backing_->size();
    const std::uint64_t n = pos >= bsize ? 0 : std::min(len, bsize - pos);
    if (n < len) {
        const auto tail = slice(buffers, static_cast<std::size_t>(n), static_cast<std::size_t>(len - n));
        for (const auto& b : tail) std::memset(b.data(), 0, b.size());
    }
    if (n == 0) return false;
    file_->debug_event(blkdbg_event::read_backing_aio);
    backing_->read(pos, slice(buffers, 0, static_cast<std::size_t>(n)),
                   [h = std::move(handler)](std::error_code ec, std::size_t) mutable { std::move(h)(ec); });
    return true;
}

// ---------------------------------------------------------------------------
// Header updates and the need-check bit
// ---------------------------------------------------------------------------

void qed_image::write_header(const header& h, op_handler handler) {
    // Only the 64-byte struct changes; the rest of the block (backing name,
    // unknown extensions) is written back as read.
    auto block = std::make_shared<aligned_bytes>(allocate_aligned(io_align_, false));
    std::memcpy(block->get(), header_block_.get(), io_align_);
    const auto bytes = encode(h);
    std::memcpy(block->get(), bytes.data(), bytes.size());
    const boost::asio::const_buffer buf(block->get(), io_align_);
    file_->async_write_at(0, {&buf, 1},
                          [this, block, h, handler = std::move(handler)](std::error_code ec, std::size_t) mutable {
                              if (!ec) {
                                  header_block_ = std::move(*block);
                                  header_ = h;
                              }
                              std::move(handler)(ec);
                          });
}

boost::asio::awaitable<std::error_code> qed_image::write_header_co(const header& h) {
    co_return co_await co::op([this, h](op_handler done) { write_header(h, std::move(done)); });
}

void qed_image::mark_dirty(op_handler handler) {
    header h = header_;
    h.features |= feature_need_check;
    // The bit must be durable before any L2 entry that could point at a
    // cluster whose data did not land. Table entries reach the disk only
    // through write-back rounds, and the next round flushes first.
    write_header(h, [this, handler = std::move(handler)](std::error_code ec) mutable {
        if (!ec) need_check_unflushed_ = true;
        std::move(handler)(ec);
    });
}

void qed_image::start_need_check_timer() {
    if (closing_ || closed_ || !may_clear_need_check() || !header_.has(feature_need_check)) return;
    timer_armed_ = true;
    need_check_timer_.expires_after(options_.need_check_timeout);
    std::weak_ptr<device> weak = weak_from_this();
    need_check_timer_.async_wait([weak](boost::system::error_code ec) {
        if (ec) return;  // cancelled
        if (auto self = weak.lock()) static_cast<qed_image&>(*self).on_need_check_timer();
    });
}

void qed_image::cancel_need_check_timer() {
    if (!timer_armed_) return;
    timer_armed_ = false;
    need_check_timer_.cancel();
}

void qed_image::on_need_check_timer() {
    timer_armed_ = false;
    if (closing_ || closed_ || !alloc_queue_.idle() || !header_.has(feature_need_check) || !may_clear_need_check())
        return;
    run_request([this, self = self_of(this)] {
        if (closed_ || !alloc_queue_.idle() || !header_.has(feature_need_check)) return request_done();
        alloc_queue_.plug();  // no allocation may start while the bit goes away
        co::run(ex_, clear_need_check(), [this, self](std::error_code ec) {
            if (ec) log(filename_ + ": could not clear the need-check bit: " + ec.message());
            alloc_queue_.unplug();
            request_done();
        });
    });
}

boost::asio::awaitable<std::error_code> qed_image::clear_need_check() {
    // Every L2/L1 update so far must be durable before the image says it is clean.
    if (auto ec = co_await sync_co(true)) co_return ec;
    header h = header_;
    h.features &= ~std::uint64_t{feature_need_check};
    if (auto ec = co_await write_header_co(h)) co_return ec;
    co_return co_await co::flush(*file_);
}

// ---------------------------------------------------------------------------
// Maintenance operations (exclusive)
// ---------------------------------------------------------------------------

void qed_image::grow(std::uint64_t new_size, op_handler handler) {
    run_exclusive([this, self = self_of(this), new_size, h = std::move(handler)]() mutable {
        co::run(ex_, do_grow(new_size), [this, self, h = std::move(h)](std::error_code ec) mutable {
            complete(std::move(h), ec);
            exclusive_done();
        });
    });
}

boost::asio::awaitable<std::error_code> qed_image::do_grow(std::uint64_t new_size) {
    {
        {
            if (closed_) co_return errc::closed;
            if (options_.read_only) co_return errc::read_only;
            if (new_size < header_.image_size) co_return errc::shrink_not_supported;
            if (new_size % sector_size) co_return errc::image_size_unaligned;
            if (new_size > max_image_size(header_.cluster_size, header_.table_size)) co_return errc::image_too_large;
            if (new_size == header_.image_size) co_return std::error_code{};
            // The L1 entries the new size covers come into memory first (the
            // zeroing below and every later request look them up). They are
            // read from disk, as they are: whatever the file holds there is
            // what check saw and repaired. Pending L1 updates go to the disk
            // first, so the write-back's record of dirty L1 sectors is empty
            // while the table changes size; nothing on disk changes here.
            if (const std::uint32_t want = l1_entries_for(new_size); want > l1_->size()) {
                if (auto ec = co_await sync_co(false)) co_return ec;
                if (writeback_.dirty()) co_return std::make_error_code(std::errc::io_error);
                const std::uint32_t have = l1_->size();
                table more(want - have);
                if (auto ec = co_await read_l1_piece(have, more)) co_return ec;
                l1_->grow(want);
                std::copy(more.data(), more.data() + more.size(), l1_->data() + have);
            }
            // A backing file longer than the image must not show through the
            // new space: guest bytes past the old end were never there, so
            // they read as zeros (QEMU >= 5.1 does the same).
            const std::uint64_t old_size = header_.image_size;
            if (header_.has(feature_backing_file)) {
                std::uint64_t backing_size = 0;
                if (backing_) {
                    backing_size = backing_->size();
                } else {  // opened without it (metadata tools): learn its size
                    std::vector<file_identity> chain{file_->identity()};
                    device_result r =
                        co_await open_backing_chain(ex_, backing_full_, backing_format_, options_, 1, std::move(chain));
                    if (r.first) co_return r.first;
                    backing_size = r.second->size();
                    device* d = r.second.get();
                    co_await co::op([d](op_handler h) { d->close(std::move(h)); });
                }
                const std::uint64_t end = std::min(new_size, backing_size);
                if (end > old_size) {
                    header_.image_size = new_size;  // in memory only, so the zeroing is in range
                    qed_image* self = this;
                    const std::uint64_t off = old_size, len = end - old_size;
                    const std::error_code ec = co_await co::op([self, off, len](op_handler h) {
                        ++self->in_flight_;  // an internal request inside this exclusive operation
                        aiocb::start_write_zeroes(self_of(self), off, len, zero_options{}, std::move(h));
                    });
                    header_.image_size = old_size;
                    if (ec) co_return ec;
                    if (auto sec = co_await sync_co(true)) co_return sec;  // zeros durable before the size grows
                }
            }
            header hd = header_;
            hd.image_size = new_size;
            if (auto ec = co_await write_header_co(hd)) co_return ec;
            co_return co_await co::flush(*file_);
        }
    }
}

void qed_image::change_backing_file(std::string name, std::optional<image_format> format, op_handler handler) {
    run_exclusive([this, self = self_of(this), name = std::move(name), format, h = std::move(handler)]() mutable {
        co::run(ex_, do_change_backing_file(std::move(name), format),
                [this, self, h = std::move(h)](std::error_code ec) mutable {
                    complete(std::move(h), ec);
                    exclusive_done();
                });
    });
}

boost::asio::awaitable<std::error_code> qed_image::do_change_backing_file(std::string name,
                                                                          std::optional<image_format> format) {
    if (closed_) co_return errc::closed;
    if (options_.read_only) co_return errc::read_only;
    // Unknown compat features may own the bytes after the header.
    if (!name.empty() && (header_.compat_features & ~known_compat_features)) co_return errc::unsupported_compat_features;
    if (name.size() > max_backing_name_size || header_struct_size + name.size() > geo_.header_bytes)
        co_return errc::backing_name_too_long;

    // Open the new chain first: a missing or looping backing file is
    // refused before anything on disk changes.
    std::shared_ptr<device> new_backing;
    const std::string full = name.empty() ? std::string{} : resolve_backing_path(filename_, name);
    if (!name.empty() && options_.open_backing) {
        std::vector<file_identity> chain{file_->identity()};
        device_result r = co_await open_backing_chain(ex_, full, format, options_, 1, std::move(chain));
        if (r.first) co_return r.first;
        new_backing = std::move(r.second);
    }

    header hd = header_;
    hd.features &= ~std::uint64_t{feature_backing_file | feature_backing_format_no_probe};
    hd.backing_filename_offset = header_struct_size;  // where QEMU leaves it too
    hd.backing_filename_size = 0;
    if (!name.empty()) {
        hd.features |= feature_backing_file;
        if (format == image_format::raw) hd.features |= feature_backing_format_no_probe;
        hd.backing_filename_size = static_cast<std::uint32_t>(name.size());
    }

    // The switch must be atomic: the header's first block is written in one
    // piece. A name that fits there goes right after the header struct (as
    // QEMU puts it). A longer name first goes, whole, to blocks that don't
    // overlap the old name, is flushed, and only then does the first block
    // point at it: power failing at any moment leaves the old header with
    // its intact old name, or the new header with its intact new name.
    const std::size_t block = io_align_;
    if (!name.empty() && header_struct_size + name.size() > block) {
        // Candidate places past the first block: the end of the header
        // area, right after the old name, right at the second block. The
        // first that doesn't overlap the old name wins; with none, the name
        // is too long to switch to safely.
        const bool had = header_.has(feature_backing_file);
        const std::uint64_t old_start = had ? header_.backing_filename_offset : 0;
        const std::uint64_t old_end = had ? old_start + header_.backing_filename_size : 0;
        const std::uint64_t len = (name.size() + block - 1) / block * block;
        auto fits = [&](std::uint64_t at) {
            return at >= block && at + name.size() <= geo_.header_bytes &&
                   (!had || at + len <= old_start || at >= old_end);
        };
        const std::uint64_t candidates[] = {geo_.header_bytes >= len ? geo_.header_bytes - len : 0,
                                            (old_end + block - 1) / block * block, block};
        std::uint64_t at = 0;
        for (std::uint64_t c : candidates)
            if (fits(c)) {
                at = c;
                break;
            }
        if (at == 0) co_return errc::backing_name_too_long;
        hd.backing_filename_offset = static_cast<std::uint32_t>(at);
        auto area = allocate_aligned(len, true);
        if (auto ec = co_await co::read(*file_, at, area.get(), static_cast<std::size_t>(len))) co_return ec;
        std::memcpy(area.get(), name.data(), name.size());
        if (auto ec = co_await co::write(*file_, at, area.get(), static_cast<std::size_t>(len))) co_return ec;
        if (auto ec = co_await co::flush(*file_)) co_return ec;
    }
    auto first = allocate_aligned(block, false);
    std::memcpy(first.get(), header_block_.get(), block);
    const auto bytes = encode(hd);
    std::memcpy(first.get(), bytes.data(), bytes.size());
    if (hd.backing_filename_offset == header_struct_size)
        std::memcpy(first.get() + header_struct_size, name.data(), name.size());
    if (auto ec = co_await co::write(*file_, 0, first.get(), block)) co_return ec;
    if (auto ec = co_await co::flush(*file_)) co_return ec;

    std::memcpy(header_block_.get(), first.get(), block);
    header_ = hd;
    auto old = std::move(backing_);
    backing_ = std::move(new_backing);
    backing_name_ = name;
    backing_full_ = full;
    backing_format_ = name.empty() ? std::nullopt : (format ? format : std::optional<image_format>{});
    if (old) {
        device* d = old.get();
        co_await co::op([d](op_handler done) { d->close(std::move(done)); });
    }
    co_return std::error_code{};
}

void qed_image::make_empty(op_handler handler) {
    run_exclusive([this, self = self_of(this), h = std::move(handler)]() mutable {
        co::run(ex_, do_make_empty(), [this, self, h = std::move(h)](std::error_code ec) mutable {
            complete(std::move(h), ec);
            exclusive_done();
        });
    });
}

boost::asio::awaitable<std::error_code> qed_image::do_make_empty() {
    {
        {
            if (closed_) co_return errc::closed;
            if (options_.read_only) co_return errc::read_only;
            // Unlink everything (L1 all zeros, durable), then drop the space.
            // A crash between the two leaves leaks, never dangling entries.
            co_await sync_co(false);  // no round may write a table while we drop them
            writeback_.discard();
            // The whole on-disk L1 (entries past the image size too: check
            // reads them) becomes zeros, written 1 MiB at a time from the
            // shared zero block rather than from a whole empty table. Power
            // failing between two pieces leaves some entries zero and the
            // rest as they were: every table still linked is intact, the
            // unlinked ones are leaks, which check reports and nothing reads.
            {
                const auto z = zero_block();
                for (std::uint64_t done = 0; done < geo_.table_bytes;) {
                    const std::size_t n =
                        static_cast<std::size_t>(std::min<std::uint64_t>(geo_.table_bytes - done, z.size()));
                    if (auto ec = co_await co::write(*file_, header_.l1_table_offset + done, z.data(), n)) co_return ec;
                    done += n;
                }
            }
            if (auto ec = co_await co::flush(*file_)) co_return ec;
            std::fill(l1_->data(), l1_->data() + l1_->size(), 0);
            cache_.clear_unused();
            const std::uint64_t end = std::max(geo_.header_bytes, header_.l1_table_offset + geo_.table_bytes);
            // Nothing past `end` is referenced any more: new clusters go there
            // even if the file can't be cut back now (a failing or full disk);
            // close tries again. Until the cut succeeds those bytes may hold
            // old data, so physical_size_ stays and new clusters below it are
            // written whole (prefill), as over any garbage.
            file_end_ = end;
            tail_garbage_ = true;
            if (auto ec = co_await co::resize(*file_, end)) co_return ec;
            if (!file_->fixed_size()) physical_size_ = end;  // an export keeps its old bytes
            tail_garbage_ = false;
            co_return co_await co::flush(*file_);
        }
    }
}

void qed_image::close(op_handler handler) {
    if (closing_ || closed_) {
        complete_later(std::move(handler), make_error_code(errc::closed));
        return;
    }
    closing_ = true;
    run_exclusive([this, self = self_of(this), h = std::move(handler)]() mutable {
        co::run(ex_, do_close(), [this, self, h = std::move(h)](std::error_code ec) mutable {
            complete(std::move(h), ec);
            exclusive_done();
        });
    });
}

boost::asio::awaitable<std::error_code> qed_image::do_close() {
    cancel_need_check_timer();
    std::error_code first;
    auto keep = [&first](std::error_code ec) {
        if (ec && !first) first = ec;
        return ec;
    };
    if (!options_.read_only) {
        if (!keep(co_await sync_co(true))) {
            // Drop what failed allocations left past the last cluster.
            if (tail_garbage_ && physical_size_ > file_end_ && !file_->fixed_size() &&
                !keep(co_await co::resize(*file_, file_end_)))
                physical_size_ = file_end_;
            // Clean shutdown: no check needed next time -- unless a check
            // found corruption it could not repair.
            if (header_.has(feature_need_check) && may_clear_need_check()) {
                header h = header_;
                h.features &= ~std::uint64_t{feature_need_check};
                if (!keep(co_await write_header_co(h))) keep(co_await co::flush(*file_));
            }
        }
    }
    if (backing_) {
        auto owner = backing_;
        device* d = owner.get();
        keep(co_await co::op([d](op_handler done) { d->close(std::move(done)); }));
    }
    {
        // A file that is itself an image (a nested format) is closed as one.
        block_file* f = file_.get();
        keep(co_await co::op([f](op_handler done) { f->async_close(std::move(done)); }));
    }
    closed_ = true;
    cache_.clear_unused();
    // Let go of the file now, not when the last handle goes: that closes
    // the descriptor and so drops the image locks (operations still in
    // flight in a backend hold the descriptor themselves; none are left).
    file_.reset();
    co_return first;
}

// ---------------------------------------------------------------------------
// Info
// ---------------------------------------------------------------------------

image_info qed_image::info() const {
    image_info i;
    i.filename = filename_;
    i.format = image_format::qed;
    i.virtual_size = header_.image_size;
    std::error_code ec;
    i.file_size = file_ ? file_->size(ec) : 0;
    i.read_only = options_.read_only;
    i.backend = file_ ? file_->backend_name() : "";
    i.cluster_size = header_.cluster_size;
    i.table_size = header_.table_size;
    i.header_size = header_.header_size;
    i.l1_table_offset = header_.l1_table_offset;
    i.features = header_.features;
    i.compat_features = header_.compat_features;
    i.autoclear_features = header_.autoclear_features;
    i.need_check = header_.has(feature_need_check);
    i.request_alignment = sector_size;
    i.backing_file = backing_name_;
    i.backing_file_full = backing_full_;
    i.backing_format = backing_format_;
    for (auto b = backing_; b; b = b->backing()) ++i.chain_depth;
    return i;
}

}  // namespace qed::detail
