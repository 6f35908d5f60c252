// SPDX-License-Identifier: BSL-1.0
#include "request/allocating_write.hpp"

#include "cluster/find_cluster.hpp"
#include "image/qed_image.hpp"
#include "request/aiocb.hpp"

#include <algorithm>

#include <boost/asio/post.hpp>

namespace qed::detail {
namespace {

// How much one batch may carry (the head always goes, whatever its size).
constexpr std::size_t max_members = 1024;
constexpr std::uint64_t max_batch_bytes = 64ull << 20;

void append_zeros(const_buffers& out, std::uint64_t len) {
    const auto z = zero_block();
    while (len) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(len, z.size()));
        out.emplace_back(z.data(), n);
        len -= n;
    }
}

}  // namespace

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
    busy_ = true;
    img_.cancel_need_check_timer();
    auto* batch = new allocating_write(img_, *this);
    if (!batch->absorb(head)) {
        // The head's own lookup found these clusters unallocated moments ago;
        // refusing it would be a bug. Fail it rather than spin.
        delete batch;
        busy_ = false;
        head->alloc_done(std::make_error_code(std::errc::io_error));
        release_waiters();
        return;
    }
    for (auto it = waiting_.begin(); it != waiting_.end();) {
        if (batch->absorb(*it)) it = waiting_.erase(it);
        else ++it;
    }
    batch->run();
}

bool allocating_write_queue::still_needs_allocation(const aiocb* a) {
    const alloc_claim& c = a->claim();
    const geometry& g = img_.geo_;
    bool missing = false, invalid = false;
    l2_ref t = cached_table(img_, g.l1_index(c.pos), missing, invalid);
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
    if (idle()) img_.start_need_check_timer();
}

void allocating_write_queue::unplug() {
    plugged_ = false;
    release_waiters();
}

// ===========================================================================
// The batch
// ===========================================================================

std::uint64_t allocating_write::entry_of(std::uint64_t cluster) const {
    const geometry& g = img_.geo_;
    const auto it = tables_.find(cluster >> g.l2_bits);
    if (it == tables_.end() || !it->second.existing) return 0;
    return it->second.existing->t[cluster & (g.table_entries - 1)];
}

bool allocating_write::absorb(aiocb* a) {
    const alloc_claim& c = a->claim();
    const geometry& g = img_.geo_;
    const bool head = members_.empty();
    if (!head && members_.size() >= max_members) return false;

    // The claim's L2 table must be in memory, or not exist yet.
    const std::uint64_t l1_index = g.l1_index(c.pos);
    auto tit = tables_.find(l1_index);
    table_use use;
    if (tit == tables_.end()) {
        bool missing = false, invalid = false;
        use.existing = cached_table(img_, l1_index, missing, invalid);
        if (invalid || (!missing && !use.existing)) return false;
    }
    const table_use& tu = tit == tables_.end() ? use : tit->second;

    // No byte may be claimed twice in one batch.
    auto next = claimed_.lower_bound(c.pos);
    if (next != claimed_.end() && next->first < c.pos + c.len) return false;
    if (next != claimed_.begin() && std::prev(next)->second.end > c.pos) return false;

    const bool zero_clusters = c.how == alloc_claim::mode::zero_clusters;
    const std::uint64_t first = c.pos >> g.cluster_bits;
    const std::uint64_t last = (c.pos + c.len - 1) >> g.cluster_bits;
    std::uint64_t added = 0;
    for (std::uint64_t k = first; k <= last; ++k) {
        if (auto s = clusters_.find(k); s != clusters_.end()) {
            if (s->second.zero_cluster || zero_clusters) return false;  // don't mix the two in a cluster
            continue;
        }
        const std::uint64_t e = tu.existing ? tu.existing->t[k & (g.table_entries - 1)] : 0;
        if (e != 0 && e != zero_cluster_entry) return false;  // allocated meanwhile: look up again later
        if (!zero_clusters) ++added;
    }
    if (!head && (new_data_clusters_ + added) * g.cluster_size > max_batch_bytes) return false;

    // Record each cluster's current entry (it decides the fill source) before
    // `use` is moved into the map.
    for (std::uint64_t k = first; k <= last; ++k) {
        if (clusters_.count(k)) continue;
        const std::uint64_t e = tu.existing ? tu.existing->t[k & (g.table_entries - 1)] : 0;
        clusters_.emplace(k, slot{e, zero_clusters});
    }
    if (tit == tables_.end()) tables_.emplace(l1_index, std::move(use));
    new_data_clusters_ += added;
    claimed_.emplace(c.pos, claimed_range{c.pos + c.len, a});
    members_.push_back(a);
    return true;
}

void allocating_write::run() {
    plan();
    step();
}

// Allocate file space: data clusters first (in guest order, so sequential
// writes give a sequential file), then any new L2 tables.
void allocating_write::plan() {
    const geometry& g = img_.geo_;
    batch_start_ = img_.file_end_;
    std::uint64_t host = img_.new_clusters(new_data_clusters_);
    for (auto& [k, s] : clusters_) {
        if (s.zero_cluster) continue;
        s.host = host;
        host += g.cluster_size;
    }
    for (auto& [l1_index, tu] : tables_) {
        if (tu.existing) continue;
        img_.cache_.make_room();  // before allocating: the table may be 1 GiB
        tu.fresh = std::make_shared<l2_entry>(img_.new_clusters(g.table_size), g.table_entries);
    }
    batch_end_ = img_.file_end_;
    phys_before_ = img_.physical_size_;
}

void allocating_write::step() {
    for (;;) {
        switch (state_) {
        case state::mark_dirty:
            state_ = state::prefill;
            // Without a backing file, data is not flushed before its L2 entry
            // is written, so the image must say "check me" before any cluster
            // is linked (the write-back flushes the bit before table writes).
            if (new_data_clusters_ && !img_.header_.has(feature_backing_file) &&
                !img_.header_.has(feature_need_check)) {
                start(1);
                img_.mark_dirty([this](std::error_code ec) { one_done(ec); });
                return;
            }
            break;
        case state::prefill:
            state_ = state::write;
            issue_prefill();
            if (pending_) return;
            break;
        case state::write:
            state_ = state::update;
            issue_writes();
            if (pending_) return;
            break;
        case state::update:
            state_ = state::done;
            issue_updates();
            if (pending_) return;
            break;
        case state::done:
            // A batch with no I/O at all (zero clusters in a cached table)
            // still completes later: its members are inside enqueue() now.
            if (!went_async_) {
                went_async_ = true;
                boost::asio::post(img_.get_executor(), [this] { finish(); });
                return;
            }
            return finish();
        }
    }
}

void allocating_write::one_done(std::error_code ec) {
    went_async_ = true;
    if (ec && !error_) error_ = ec;
    if (--pending_ != 0) return;
    if (error_) return finish();
    step();
}

// Split every new data cluster into pieces: member bytes, and the gaps
// around them (prefill / postfill) with their source.
void allocating_write::issue_prefill() {
    const geometry& g = img_.geo_;
    const bool has_backing = img_.header_.has(feature_backing_file);
    const std::uint64_t backing_size = img_.backing_ ? img_.backing_->size() : 0;

    auto add_gap = [&](std::uint64_t pos, std::uint64_t len, const slot& s) {
        if (len == 0) return;
        // A zero cluster's untouched bytes are zeros, never backing data.
        if (s.old_entry == zero_cluster_entry || !has_backing || pos >= backing_size) {
            pieces_.push_back({pos, len, piece::source::zeros, {}, 0});
            return;
        }
        const std::uint64_t in_backing = std::min(len, backing_size - pos);
        pieces_.push_back({pos, in_backing, piece::source::backing, {}, 0});
        if (in_backing < len) pieces_.push_back({pos + in_backing, len - in_backing, piece::source::zeros, {}, 0});
    };

    for (const auto& [k, s] : clusters_) {
        if (s.zero_cluster) continue;
        std::uint64_t cur = k << g.cluster_bits;
        const std::uint64_t end = cur + g.cluster_size;
        // Claims overlapping this cluster, in order (claims never overlap).
        auto it = claimed_.upper_bound(cur);
        if (it != claimed_.begin()) --it;
        for (; it != claimed_.end() && it->first < end; ++it) {
            if (it->second.end <= cur) continue;
            const std::uint64_t s0 = std::max(it->first, cur);
            const std::uint64_t s1 = std::min(it->second.end, end);
            add_gap(cur, s0 - cur, s);
            const alloc_claim& c = it->second.owner->claim();
            if (c.how == alloc_claim::mode::data)
                pieces_.push_back({s0, s1 - s0, piece::source::data, slice(c.data, s0 - c.pos, s1 - s0), 0});
            else
                pieces_.push_back({s0, s1 - s0, piece::source::zeros, {}, 0});
            cur = s1;
        }
        add_gap(cur, end - cur, s);
    }

    pending_ = 1;  // guard while issuing
    for (auto& p : pieces_) {
        if (p.from != piece::source::backing) continue;
        p.backing_buffer = backing_buffers_.size();
        backing_buffers_.push_back(allocate_aligned(p.len, false));
        mutable_buffers dst{boost::asio::mutable_buffer(backing_buffers_.back().get(), p.len)};
        ++pending_;
        img_.file_->debug_event(blkdbg_event::cow_read);
        if (!img_.read_backing(p.pos, dst, [this](std::error_code ec) { one_done(ec); })) --pending_;
    }
    --pending_;
}

void allocating_write::issue_writes() {
    const geometry& g = img_.geo_;
    // Host offset of a guest position inside a new data cluster.
    auto host_of = [&](std::uint64_t pos) {
        return clusters_.at(pos >> g.cluster_bits).host + g.offset_in_cluster(pos);
    };

    std::uint64_t op_start = 0;
    const_buffers op;
    std::uint64_t data_end = batch_start_;  // end of the data region written so far (hole or not)
    bool ends_in_hole = false;
    std::uint64_t hole_start = 0;
    auto close_op = [&] {
        if (!op.empty()) writes_.emplace_back(op_start, std::move(op));
        op.clear();
    };
    auto add = [&](std::uint64_t host, auto&& fill) {
        if (op.empty()) op_start = host;
        fill(op);
    };
    for (const auto& p : pieces_) {
        std::uint64_t host = host_of(p.pos);
        std::uint64_t len = p.len;
        if (p.from == piece::source::zeros) {
            // Bytes at or past phys_before_ were never written: they read as
            // zeros already, so leave a hole instead of writing zeros.
            const std::uint64_t written = host < phys_before_ ? std::min(len, phys_before_ - host) : 0;
            if (written) add(host, [&](const_buffers& o) { append_zeros(o, written); });
            if (written < len) {
                close_op();
                if (!ends_in_hole) hole_start = host + written;
                ends_in_hole = true;
            } else {
                ends_in_hole = false;
            }
        } else {
            ends_in_hole = false;
            if (p.from == piece::source::data) {
                add(host, [&](const_buffers& o) { o.insert(o.end(), p.data.begin(), p.data.end()); });
            } else {
                const auto* b = backing_buffers_[p.backing_buffer].get();
                add(host, [&](const_buffers& o) { o.emplace_back(b, static_cast<std::size_t>(len)); });
            }
        }
        data_end = host + len;
    }
    close_op();
    // The file must reach the end of the last new cluster, or the cluster
    // would fall past the (cluster-rounded) end of file on the next open.
    bool fresh_tables = false;
    for (const auto& [i, tu] : tables_) fresh_tables |= static_cast<bool>(tu.fresh);
    if (ends_in_hole && !fresh_tables) {
        const std::uint64_t from = std::max(hole_start, data_end - std::min<std::uint64_t>(data_end, img_.io_align_));
        const_buffers tail;
        append_zeros(tail, data_end - from);
        writes_.emplace_back(from, std::move(tail));
    }
    // New L2 tables are private until L1 points at them: fill them in now
    // and write them. A table (or the part of it) at or past phys_before_
    // lies in space the file has never held bytes in, which reads as zeros:
    // only the blocks holding this batch's entries are written, and the
    // file is extended to the end of the batch (the last table), instead of
    // writing a table of up to 1 GiB that is mostly zeros. Below
    // phys_before_ (old bytes of a fixed-size export, or what a failed
    // batch left) the table is written whole.
    //
    // If power fails after any of these writes (or the extension): the L1
    // does not point at the table yet -- its entry is only set in memory by
    // issue_updates(), and the write-back writes L1 sectors only after a
    // flush that follows the table writes (table/writeback.hpp) -- so any
    // mix of table blocks, data and file length that landed is unreferenced
    // space past the last cluster in use: a leak at worst, cut off or reused
    // like any space past the end. A file that did not get extended is just
    // shorter; the next open starts allocating at its (cluster-rounded) end.
    // Once that flush completed, the extension and every written block are
    // durable, and the unwritten rest of the table reads as zeros, so the
    // L1 entry written after it links a complete table.
    bool extend = false;
    for (auto& [l1_index, tu] : tables_) {
        if (!tu.fresh) continue;
        std::vector<std::uint64_t> blocks;  // io_align_ blocks of the table holding entries
        for (const auto& [k, s] : clusters_) {
            if ((k >> g.l2_bits) != l1_index) continue;
            const std::uint32_t i = static_cast<std::uint32_t>(k & (g.table_entries - 1));
            tu.fresh->t[i] = s.zero_cluster ? zero_cluster_entry : s.host;
            blocks.push_back(std::uint64_t{i} * sizeof(std::uint64_t) / img_.io_align_);
        }
        const std::uint64_t off = tu.fresh->offset;
        const std::uint64_t bytes = tu.fresh->t.byte_size();
        const std::byte* raw = tu.fresh->t.raw();
        // Bytes [0, old) of the table may hold old data: write them whole.
        const std::uint64_t old = phys_before_ > off ? std::min(bytes, phys_before_ - off) : 0;
        if (old)
            writes_.emplace_back(off, const_buffers{boost::asio::const_buffer(raw, static_cast<std::size_t>(old))});
        if (old == bytes) continue;
        extend = true;
        // `blocks` is in entry order (clusters_ is sorted by guest cluster):
        // runs of neighbouring blocks become one write each.
        blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
        for (std::size_t b = 0; b < blocks.size();) {
            std::size_t e = b + 1;
            while (e < blocks.size() && blocks[e] == blocks[e - 1] + 1) ++e;
            std::uint64_t from = blocks[b] * img_.io_align_;
            const std::uint64_t to = std::min(bytes, (blocks[e - 1] + 1) * img_.io_align_);
            from = std::max(from, old);  // the part below `old` is written already
            if (from < to)
                writes_.emplace_back(off + from, const_buffers{boost::asio::const_buffer(
                                                     raw + from, static_cast<std::size_t>(to - from))});
            b = e;
        }
    }
    // Written whole, a table would have made the file reach its end; now
    // the file is extended there (to the end of the batch, the last table),
    // so the table lies inside the file on the next open. Only ever larger:
    // nothing is written past batch_end_, and the file holds nothing past
    // phys_before_ < batch_end_.
    const bool resize = extend && batch_end_ > phys_before_;
    img_.physical_size_ = std::max(img_.physical_size_, batch_end_);  // assume they may land, even on failure
    pending_ = 1;
    for (auto& [off, bufs] : writes_) {
        ++pending_;
        img_.file_->debug_event(blkdbg_event::write_aio);
        img_.file_->async_write_at(off, bufs, [this](std::error_code ec, std::size_t) { one_done(ec); });
    }
    if (resize) {
        ++pending_;
        img_.file_->async_resize(batch_end_, [this](std::error_code ec) { one_done(ec); });
    }
    --pending_;
}

void allocating_write::issue_updates() {
    const geometry& g = img_.geo_;
    tables_touched_ = true;
    std::uint64_t l1_lo = ~std::uint64_t{0}, l1_hi = 0;
    // From here on readers see the new clusters: their data is in place.
    for (const auto& [k, s] : clusters_) {
        table_use& tu = tables_.at(k >> g.l2_bits);
        if (!tu.existing) continue;
        const std::uint32_t i = static_cast<std::uint32_t>(k & (g.table_entries - 1));
        tu.existing->t[i] = s.zero_cluster ? zero_cluster_entry : s.host;
        img_.writeback_.mark(tu.existing, i, 1);  // only the sectors that changed get written
    }
    for (auto& [l1_index, tu] : tables_) {
        if (!tu.fresh) continue;
        (*img_.l1_)[l1_index] = tu.fresh->offset;
        tu.fresh->loaded = true;
        img_.cache_.insert(tu.fresh);
        l1_lo = std::min(l1_lo, l1_index);
        l1_hi = std::max(l1_hi, l1_index);
    }
    // The disk gets these in the background (table/writeback.hpp); this
    // batch's requests are complete now that their data is written and
    // linked in memory. A flush makes both durable, in QED's order.
    if (l1_lo <= l1_hi)
        img_.writeback_.mark_l1(static_cast<std::uint32_t>(l1_lo), static_cast<std::uint32_t>(l1_hi - l1_lo + 1));
    img_.writeback_.kick();
}

void allocating_write::finish() {
    // Nothing links the new space yet: give it back, so the next batch
    // reuses it (close truncates anything the failed writes left behind).
    if (error_ && !tables_touched_ && img_.file_end_ == batch_end_ && batch_end_ != batch_start_) {
        img_.file_end_ = batch_start_;
        img_.tail_garbage_ = true;
    }
    std::vector<aiocb*> members = std::move(members_);
    const std::error_code ec = error_;
    allocating_write_queue& queue = queue_;
    delete this;
    queue.busy_ = false;
    for (aiocb* m : members) m->alloc_done(ec);
    queue.batch_done();
}

}  // namespace qed::detail
