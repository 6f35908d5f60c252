// SPDX-License-Identifier: BSL-1.0
#include "request/allocating_write.hpp"

#include <algorithm>
#include <cassert>

#include "request/aiocb.hpp"
#include "request/engine.hpp"

namespace qed::detail {

// ===========================================================================
// The queue
// ===========================================================================

void allocating_write_queue::enqueue(aiocb* a) {
    if (!busy_ && !plugged_ && (waiting_.empty() || turn_ == a)) {
        turn_ = nullptr;
        start_batch(a);
    } else {
        waiting_.push_back(a);
    }
}

void allocating_write_queue::start_batch(aiocb* head) {
    assert(!busy_);  // one allocating write at a time
    busy_ = true;
    eng_.host.allocations_busy();
    auto* batch = new allocating_write(eng_);
    if (!batch->absorb(head)) {
        // The head's own lookup found these clusters unallocated moments ago;
        // refusing it would be a bug. Fail it rather than spin.
        delete batch;
        busy_ = false;
        complete_never_inline(eng_.meta.get_executor(), true,
                              [head] { head->alloc_done(std::make_error_code(std::errc::io_error)); });
        release_waiters();
        return;
    }
    for (auto it = waiting_.begin(); it != waiting_.end();) {
        if (batch->absorb(*it))
            it = waiting_.erase(it);
        else
            ++it;
    }
    batch->run();
}

bool allocating_write_queue::still_needs_allocation(const aiocb* a) {
    const alloc_claim& c = a->claim();
    const geometry& g = eng_.meta.geo();
    bool missing = false, invalid = false;
    l2_ref t = eng_.meta.cached_table(g.l1_index(c.pos), missing, invalid);
    if (invalid) return false;  // let it look up again and report the corruption
    if (!t) return true;        // no table yet (or not in memory): keep waiting
    const std::uint64_t first = c.pos >> g.cluster_bits;
    const std::uint64_t last = (c.pos + c.len - 1) >> g.cluster_bits;
    for (std::uint64_t k = first; k <= last; ++k) {
        const std::uint64_t e = t->t[k & (g.table_entries - 1)];
        if (e == 0) return true;
        if (e == zero_cluster_entry && c.how != alloc_claim::mode::zero_clusters) return true;
    }
    return false;
}

void allocating_write_queue::release_waiters() {
    // Requests whose clusters were allocated meanwhile go on now, in place.
    std::vector<aiocb*> ready;
    for (auto it = waiting_.begin(); it != waiting_.end();) {
        if (!still_needs_allocation(*it)) {
            ready.push_back(*it);
            it = waiting_.erase(it);
        } else {
            ++it;
        }
    }
    for (aiocb* a : ready) a->queue_turn();
    // The first one still needing clusters leads the next batch.
    while (!busy_ && !plugged_ && !waiting_.empty()) {
        aiocb* a = waiting_.front();
        waiting_.pop_front();
        turn_ = a;
        a->queue_turn();
        turn_ = nullptr;
    }
}

void allocating_write_queue::batch_done() {
    release_waiters();
    if (idle()) eng_.host.allocations_idle();
}

void allocating_write_queue::unplug() {
    plugged_ = false;
    release_waiters();
}

// ===========================================================================
// The batch
// ===========================================================================

allocating_write::allocating_write(request_engine& eng) : eng_(eng), plan_(eng.meta.geo()) {}

bool allocating_write::absorb(aiocb* a) {
    metadata& meta = eng_.meta;
    const bool joined = plan_.absorb(a->claim(), [&meta](std::uint64_t l1_index, bool& missing, bool& invalid) {
        return meta.cached_table(l1_index, missing, invalid);
    });
    if (joined) members_.push_back(a);
    return joined;
}

void allocating_write::run() {
    metadata& meta = eng_.meta;
    physical_before_ = meta.alloc().physical_size();
    const std::uint32_t entries = meta.geo().table_entries;
    plan_.place(meta.alloc(), [&meta, entries](std::uint64_t offset) {
        meta.cache().make_room();  // before allocating: the table may be 1 GiB
        return std::make_shared<l2_entry>(offset, entries);
    });
    inside_run_ = true;
    step();
    inside_run_ = false;  // (finish() never deletes the batch while run() is on the stack)
}

void allocating_write::step(std::error_code ec) {
    if (ec && !error_) error_ = ec;
    for (;;) {
        if (error_) return finish();
        switch (state_) {
            case state::mark_dirty:
                state_ = state::prefill;
                // Without a backing file, data is not flushed before its L2 entry
                // is written, so the image must say "check me" before any cluster
                // is linked (the write-back flushes the bit before table writes).
                if (plan_.new_data_clusters() && !eng_.meta.hdr().has(feature_backing_file) &&
                    !eng_.meta.hdr().has(feature_need_check))
                    return eng_.meta.set_need_check([this](std::error_code e) { step(e); });
                break;
            case state::prefill:
                state_ = state::write_main;
                if (!read_prefill()) return;
                break;
            case state::write_main:
                state_ = state::update;
                if (!write_main()) return;
                break;
            case state::update:
                state_ = state::done;
                update();
                break;
            case state::done:
                return finish();
        }
    }
}

// The gaps of every new data cluster that come from the backing file are
// read into buffers of their own.
bool allocating_write::read_prefill() {
    const header& h = eng_.meta.hdr();
    // A backing file that was not opened (metadata-only use) can't supply
    // prefill: its pieces are asked for anyway and fail (backing_file_missing)
    // rather than being made up as zeros.
    const auto opened = eng_.host.backing_size();
    const std::uint64_t backing_size = opened ? *opened : h.has(feature_backing_file) ? h.image_size : 0;
    pieces_ = plan_.pieces(h.has(feature_backing_file), backing_size);
    group_.open();
    for (const auto& p : pieces_) {
        if (p.from != alloc_piece::source::backing) continue;
        assert(p.backing_buffer == backing_buffers_.size());  // numbered in order
        backing_buffers_.push_back(eng_.prefill.take(p.len, eng_.meta.geo().cluster_size));
        mutable_buffers dst{boost::asio::mutable_buffer(backing_buffers_.back().get(), p.len)};
        group_.add();
        eng_.meta.file().debug_event(blkdbg_event::cow_read);
        if (!eng_.read_backing(p.pos, dst, [this](std::error_code e) { one_done(e); })) group_.done({});
    }
    return group_.close();
}

bool allocating_write::write_main() {
    metadata& meta = eng_.meta;
    std::vector<const std::byte*> backing;
    for (const auto& b : backing_buffers_) backing.push_back(b.get());
    writes_ = plan_.writes(pieces_, backing, physical_before_, meta.io_align());
    meta.alloc().may_hold_up_to(plan_.end());  // assume they may land, even on failure
    group_.open();
    for (const auto& w : writes_.writes) {
        group_.add();
        meta.file().debug_event(blkdbg_event::write_aio);
        meta.file().async_write_at(w.offset, w.bytes, [this](std::error_code e, std::size_t) { one_done(e); });
    }
    if (writes_.resize) {
        group_.add();
        meta.file().async_resize(plan_.end(), [this](std::error_code e) { one_done(e); });
    }
    return group_.close();
}

// From here on readers see the new clusters: their data is in place. The
// disk gets the changed entries in the background (table/writeback.hpp);
// this batch's requests are complete now that their data is written and
// linked in memory. A flush makes both durable, in QED's order.
void allocating_write::update() {
    metadata& meta = eng_.meta;
    tables_touched_ = true;
    for (const auto& u : plan_.l2_updates()) {
        u.table->t[u.index] = u.value;
        meta.writeback().mark(u.table, u.index, 1);  // only the sectors that changed get written
    }
    std::uint64_t l1_lo = ~std::uint64_t{0}, l1_hi = 0;
    for (const auto& u : plan_.l1_updates()) {
        meta.l1()[u.l1_index] = u.table->offset;
        u.table->loaded = true;
        meta.cache().insert(u.table);
        l1_lo = std::min(l1_lo, u.l1_index);
        l1_hi = std::max(l1_hi, u.l1_index);
    }
    if (l1_lo <= l1_hi)
        meta.writeback().mark_l1(static_cast<std::uint32_t>(l1_lo), static_cast<std::uint32_t>(l1_hi - l1_lo + 1));
    meta.writeback().kick();
}

// A batch with no I/O at all (zero clusters in a cached table) finishes
// inside run(), itself inside a member's enqueue(): its members go on later.
void allocating_write::finish() {
    complete_never_inline(eng_.meta.get_executor(), inside_run_, [this] { deliver(); });
}

void allocating_write::deliver() {
    cluster_allocator& alloc = eng_.meta.alloc();
    // Nothing links the new space yet: give it back, so the next batch
    // reuses it (close truncates anything the failed writes left behind).
    if (error_ && !tables_touched_ && alloc.end() == plan_.end() && plan_.end() != plan_.start())
        alloc.give_back(plan_.start());
    for (const auto& p : pieces_)
        if (p.from == alloc_piece::source::backing && p.backing_buffer < backing_buffers_.size())
            eng_.prefill.give(std::move(backing_buffers_[p.backing_buffer]), p.len, eng_.meta.geo().cluster_size);
    std::vector<aiocb*> members = std::move(members_);
    const std::error_code ec = error_;
    allocating_write_queue& queue = eng_.queue;
    delete this;
    queue.busy_ = false;
    for (aiocb* m : members) m->alloc_done(ec);
    queue.batch_done();
}

}  // namespace qed::detail
