// SPDX-License-Identifier: BSL-1.0
#include "request/aiocb.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

#include "block_file/completion.hpp"
#include "request/engine.hpp"

namespace qed::detail {
namespace {

// Write-zeroes over allocated clusters is split so the zero iovecs of one
// run stay modest.
constexpr std::uint64_t max_zero_run = 64ull << 20;

template <class... F>
struct overloaded : F... {
    using F::operator()...;
};
template <class... F>
overloaded(F...) -> overloaded<F...>;

}  // namespace

// ---------------------------------------------------------------------------
// The request layer's entry points
// ---------------------------------------------------------------------------

void request_engine::read(std::shared_ptr<void> keep_alive, std::uint64_t pos, mutable_buffers buffers,
                          io_handler handler) {
    const std::uint64_t len = total_size(buffers);
    aiocb::start(*this, std::move(keep_alive), aiocb::kind::read, pos, len, std::move(buffers), false, true,
                 std::move(handler));
}

void request_engine::write(std::shared_ptr<void> keep_alive, std::uint64_t pos, const_buffers buffers,
                           write_options options, io_handler handler) {
    const std::uint64_t len = total_size(buffers);
    aiocb::start(*this, std::move(keep_alive), aiocb::kind::write, pos, len, std::move(buffers), options.fua, true,
                 std::move(handler));
}

void request_engine::write_zeroes(std::shared_ptr<void> keep_alive, std::uint64_t pos, std::uint64_t len,
                                  zero_options options, op_handler handler) {
    aiocb::start(*this, std::move(keep_alive), aiocb::kind::write_zeroes, pos, len, std::monostate{}, options.fua,
                 options.may_unmap, std::move(handler));
}

void request_engine::discard(std::shared_ptr<void> keep_alive, std::uint64_t pos, std::uint64_t len,
                             op_handler handler) {
    aiocb::start(*this, std::move(keep_alive), aiocb::kind::discard, pos, len, std::monostate{}, false, true,
                 std::move(handler));
}

bool request_engine::read_backing(std::uint64_t pos, const mutable_buffers& buffers, op_handler handler) {
    const std::uint64_t len = total_size(buffers);
    const std::optional<std::uint64_t> size = host.backing_size();
    if (!size) {
        if (meta.hdr().has(feature_backing_file)) {
            // Opened without its backing file (metadata-only use): we can't
            // know these bytes, so don't make them up.
            complete_never_inline(meta.get_executor(), true, std::move(handler),
                                  make_error_code(errc::backing_file_missing));
            return true;
        }
        for (const auto& b : buffers) std::memset(b.data(), 0, b.size());
        return false;
    }
    // The backing file may be shorter than this image: zeros past its end.
    const std::uint64_t n = bytes_in_backing(pos, len, *size);
    for (const auto& b : slice(buffers, static_cast<std::size_t>(n), static_cast<std::size_t>(len - n)))
        std::memset(b.data(), 0, b.size());
    if (n == 0) return false;
    meta.file().debug_event(blkdbg_event::read_backing_aio);
    host.read_backing(pos, slice(buffers, 0, static_cast<std::size_t>(n)), std::move(handler));
    return true;
}

// ---------------------------------------------------------------------------
// The request
// ---------------------------------------------------------------------------

// (The handler is moved in by construction: Boost 1.81's
// any_completion_handler move-assignment recurses.)
aiocb::aiocb(request_engine& eng, std::shared_ptr<void> keep_alive, kind k, std::uint64_t pos, std::uint64_t len,
             any_handler handler)
    : eng_(eng),
      keep_alive_(std::move(keep_alive)),
      kind_(k),
      start_(pos),
      pos_(pos),
      end_(pos + len),
      handler_(std::move(handler)) {}

void aiocb::start(request_engine& eng, std::shared_ptr<void> keep_alive, kind k, std::uint64_t pos, std::uint64_t len,
                  any_buffers buffers, bool fua, bool may_unmap, any_handler handler) {
    auto* a = new aiocb(eng, std::move(keep_alive), k, pos, len, std::move(handler));
    a->buffers_ = std::move(buffers);
    a->fua_ = fua;
    a->may_unmap_ = may_unmap;
    a->step();
}

void aiocb::queue_turn() {
    assert(state_ == state::write_alloc);  // only a request waiting in the queue gets a turn
    state_ = state::find_cluster;
    step();
}

void aiocb::alloc_done(std::error_code ec) {
    assert(state_ == state::write_alloc);  // only a request waiting in the queue joins a batch
    state_ = state::run_done;
    step(ec);
}

// Runs answered from memory (zeros, holes without a backing file) loop here;
// every state that waits returns, and the completion calls step() again.
// Nothing this calls completes inside the call (the queue and the file
// post), so `this` is alive after each initiation returns.
void aiocb::step(std::error_code ec) {
    if (ec && !error_) error_ = ec;
    for (;;) {
        if (error_) state_ = state::complete;
        switch (state_) {
            case state::next_io:
                state_ = pos_ < end_ ? state::find_cluster : fua_ ? state::flush_fua : state::complete;
                break;
            case state::find_cluster: {
                const lookup r = find_cluster(eng_.meta, l2_, pos_, end_ - pos_);
                if (r.ec) {
                    error_ = r.ec;
                    break;
                }
                if (r.need_table) {  // load it, then look again
                    eng_.meta.load_l2(r.table_offset, resume());
                    waited_ = true;
                    return;
                }
                run_ = r.run;
                cur_len_ = r.run.length;
                state_ = route(run_);
                break;
            }
            case state::read_data:
                state_ = state::run_done;
                if (read_data(run_)) {
                    waited_ = true;
                    return;
                }
                break;
            case state::write_inplace:
                state_ = state::run_done;
                write_inplace(run_);
                waited_ = true;
                return;
            case state::write_alloc:
                eng_.queue.enqueue(this);  // queue_turn() or alloc_done() comes back
                waited_ = true;
                return;
            case state::zero_inplace:
                state_ = state::run_done;
                zero_inplace(run_);
                waited_ = true;
                return;
            case state::discard_data:
                state_ = state::run_done;
                if (discard_data(run_)) {
                    waited_ = true;
                    return;
                }
                break;
            case state::run_done:
                pos_ += cur_len_;
                state_ = state::next_io;
                break;
            case state::flush_fua:
                // Force unit access: the data, and the table updates linking it,
                // are durable before we report success.
                state_ = state::complete;
                eng_.meta.sync(true, resume());
                waited_ = true;
                return;
            case state::complete:
                return complete();
        }
    }
}

// What the run asks for, by request kind and what the run holds.
aiocb::state aiocb::route(const cluster_run& run) {
    const bool data = run.what == cluster_run::kind::data;
    switch (kind_) {
        case kind::read:
            return state::read_data;
        case kind::write:
            if (data) return state::write_inplace;  // in place: linked already, nobody to wait for
            claim_.data = run_buffers<const_buffers>();
            return claim_run(alloc_claim::mode::data, cur_len_);
        case kind::write_zeroes: {
            if (data) {
                cur_len_ = std::min(cur_len_, max_zero_run);
                return state::zero_inplace;
            }
            if (run.what == cluster_run::kind::zero)
                return state::run_done;  // already reads as zeros, whole or partial
            if (!may_unmap_) return claim_run(alloc_claim::mode::zero_data, cur_len_);  // NO_HOLE: real zeros
            // Whole clusters become zero clusters; a partial cluster at either
            // end is written as zeros.
            const geometry& g = eng_.meta.geo();
            const std::uint64_t in_cluster = g.offset_in_cluster(pos_);
            if (in_cluster != 0)
                return claim_run(alloc_claim::mode::zero_data,
                                 std::min<std::uint64_t>(cur_len_, g.cluster_size - in_cluster));
            if (cur_len_ >= g.cluster_size)
                return claim_run(alloc_claim::mode::zero_clusters, g.start_of_cluster(cur_len_));
            return claim_run(alloc_claim::mode::zero_data, cur_len_);
        }
        case kind::discard:
            return data ? state::discard_data : state::run_done;  // zero/unallocated: nothing stored to give back
    }
    return state::run_done;
}

aiocb::state aiocb::claim_run(alloc_claim::mode how, std::uint64_t len) {
    cur_len_ = len;
    claim_.pos = pos_;
    claim_.len = len;
    claim_.how = how;
    if (how != alloc_claim::mode::data)
        claim_.data.clear();
    else if (total_size(claim_.data) != len)
        claim_.data = run_buffers<const_buffers>();
    return state::write_alloc;
}

bool aiocb::read_data(const cluster_run& run) {
    auto bufs = run_buffers<mutable_buffers>();
    switch (run.what) {
        case cluster_run::kind::data:
            eng_.meta.file().debug_event(blkdbg_event::read_aio);
            eng_.meta.file().async_read_at(run.host_offset, bufs,
                                           [this](std::error_code ec, std::size_t) { step(ec); });
            return true;
        case cluster_run::kind::zero:
            for (const auto& b : bufs) std::memset(b.data(), 0, b.size());  // zero clusters hide the backing file
            return false;
        case cluster_run::kind::unallocated:
        case cluster_run::kind::no_table:
            break;
    }
    return eng_.read_backing(pos_, bufs, resume());
}

void aiocb::write_inplace(const cluster_run& run) {
    eng_.meta.file().debug_event(blkdbg_event::write_aio);
    eng_.meta.file().async_write_at(run.host_offset, run_buffers<const_buffers>(),
                                    [this](std::error_code ec, std::size_t) { step(ec); });
}

// The cluster stays allocated; its storage is given back to the file system
// (hole punched). Where holes can't be punched, or NO_HOLE asks for real
// zeros, zeros are written.
void aiocb::zero_inplace(const cluster_run& run) {
    const std::uint64_t host = run.host_offset;
    auto write_zeros = [this, host] {
        const_buffers zeros;
        append_zeros(zeros, cur_len_);
        eng_.meta.file().async_write_at(host, zeros, [this](std::error_code ec, std::size_t) { step(ec); });
    };
    eng_.meta.file().debug_event(blkdbg_event::write_aio);
    if (!may_unmap_) return write_zeros();
    eng_.meta.file().async_punch_hole(host, cur_len_, [this, write_zeros](std::error_code ec) {
        if (ec != make_error_code(errc::not_supported)) return step(ec);
        write_zeros();
    });
}

// Discard: the whole data clusters of this run give their storage back, in
// place. Nothing else is touched: no table entry changes, no allocation, no
// NEED_CHECK, so discard never waits for the allocating-write queue.
//
// Crash reasoning: the only on-disk step is the hole punch (fallocate
// PUNCH_HOLE | KEEP_SIZE) over data bytes of clusters that stay referenced.
// If power fails before, during or after it, every file-system block of
// those clusters holds either its old bytes or zeros, and the image's
// metadata is exactly what it was: the image opens clean and each discarded
// cluster reads old data or zeros, both of which discard allows. Like a
// write, the punch is durable after the next completed flush.
bool aiocb::discard_data(const cluster_run& run) {
    const geometry& g = eng_.meta.geo();
    const std::uint64_t run_end = pos_ + cur_len_;
    // Whole clusters only; the image's last cluster counts as whole when the
    // range reaches the end of the image (its tail is past the guest size).
    const std::uint64_t first = g.start_of_cluster(pos_) == pos_ ? pos_ : g.start_of_cluster(pos_) + g.cluster_size;
    const std::uint64_t last = run_end == eng_.meta.hdr().image_size ? run_end : g.start_of_cluster(run_end);
    if (first >= last) return false;  // partial clusters only: left alone
    eng_.meta.file().async_punch_hole(run.host_offset + (first - pos_), last - first, [this](std::error_code ec) {
        // Files without hole punching keep the data: discard is a hint.
        if (ec == make_error_code(errc::not_supported)) ec = {};
        step(ec);
    });
    return true;
}

// qed_aio_complete: the result goes to the user's handler on the image's
// executor -- queued when no step ever waited, since start() is then still
// on the stack -- and the image's gate learns the request is done.
void aiocb::complete() {
    request_engine& eng = eng_;
    std::shared_ptr<void> keep = std::move(keep_alive_);
    l2_.reset();
    eng.meta.cache().trim();
    const bool inside_start = !waited_;
    const std::error_code ec = error_;
    const std::size_t bytes = ec ? 0 : static_cast<std::size_t>(end_ - start_);
    any_handler handler = std::move(handler_);
    delete this;
    const auto& ex = eng.meta.get_executor();
    std::visit(overloaded{[&](io_handler& h) { complete_never_inline(ex, inside_start, std::move(h), ec, bytes); },
                          [&](op_handler& h) { complete_never_inline(ex, inside_start, std::move(h), ec); }},
               handler);
    eng.host.request_done();
}

}  // namespace qed::detail
