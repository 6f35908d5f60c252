// SPDX-License-Identifier: BSL-1.0
#include "cluster/alloc_plan.hpp"

#include <algorithm>
#include <cassert>

#include "table/table.hpp"

namespace qed::detail {

bool alloc_plan::has_new_tables() const noexcept {
    return std::any_of(tables_.begin(), tables_.end(), [](const auto& t) { return !t.second.existing; });
}

bool alloc_plan::absorb(const alloc_claim& c, const table_lookup& lookup_table) {
    assert(c.len > 0 && g_.l1_index(c.pos) == g_.l1_index(c.pos + c.len - 1));  // a claim lies in one L2 table
    const bool first = claimed_.empty();
    if (!first && claimed_.size() >= max_claims) return false;

    // The claim's L2 table must be in memory, or not exist yet.
    const std::uint64_t l1_index = g_.l1_index(c.pos);
    auto tit = tables_.find(l1_index);
    table_use use;
    if (tit == tables_.end()) {
        bool missing = false, invalid = false;
        use.existing = lookup_table(l1_index, missing, invalid);
        if (invalid || (!missing && !use.existing)) return false;
    }
    const table_use& tu = tit == tables_.end() ? use : tit->second;

    // No byte may be claimed twice in one batch.
    auto next = claimed_.lower_bound(c.pos);
    if (next != claimed_.end() && next->first < c.pos + c.len) return false;
    if (next != claimed_.begin() && std::prev(next)->second.pos + std::prev(next)->second.len > c.pos) return false;

    const bool zero_clusters = c.how == alloc_claim::mode::zero_clusters;
    const std::uint64_t first_cluster = c.pos >> g_.cluster_bits;
    const std::uint64_t last_cluster = (c.pos + c.len - 1) >> g_.cluster_bits;
    auto entry = [&](std::uint64_t k) { return tu.existing ? tu.existing->t[k & (g_.table_entries - 1)] : 0; };
    std::uint64_t added = 0;
    for (std::uint64_t k = first_cluster; k <= last_cluster; ++k) {
        if (auto s = clusters_.find(k); s != clusters_.end()) {
            if (s->second.zero_cluster || zero_clusters) return false;  // don't mix the two in a cluster
            continue;
        }
        const std::uint64_t e = entry(k);
        if (e != 0 && e != zero_cluster_entry) return false;  // allocated meanwhile: look up again later
        if (!zero_clusters) ++added;
    }
    if (!first && (new_data_clusters_ + added) * g_.cluster_size > max_bytes) return false;

    for (std::uint64_t k = first_cluster; k <= last_cluster; ++k)
        if (!clusters_.count(k)) clusters_.emplace(k, slot{entry(k), zero_clusters});
    if (tit == tables_.end()) tables_.emplace(l1_index, std::move(use));
    new_data_clusters_ += added;
    claimed_.emplace(c.pos, c);
    return true;
}

void alloc_plan::place(cluster_allocator& alloc, const std::function<l2_ref(std::uint64_t offset)>& new_table) {
    start_ = alloc.end();
    std::uint64_t host = alloc.take(new_data_clusters_ * g_.cluster_size);
    for (auto& [k, s] : clusters_) {
        if (s.zero_cluster) continue;
        s.host = host;
        host += g_.cluster_size;
    }
    for (auto& [l1_index, tu] : tables_)
        if (!tu.existing) tu.fresh = new_table(alloc.take(g_.table_bytes));
    end_ = alloc.end();
}

std::vector<alloc_piece> alloc_plan::pieces(bool has_backing, std::uint64_t backing_size) const {
    std::vector<alloc_piece> out;
    std::size_t backing_pieces = 0;
    auto add_gap = [&](std::uint64_t pos, std::uint64_t len, const slot& s) {
        if (len == 0) return;
        // A zero cluster's untouched bytes are zeros, never backing data.
        const std::uint64_t in_backing =
            s.old_entry == zero_cluster_entry || !has_backing ? 0 : bytes_in_backing(pos, len, backing_size);
        if (in_backing) out.push_back({pos, in_backing, alloc_piece::source::backing, {}, backing_pieces++});
        if (in_backing < len) out.push_back({pos + in_backing, len - in_backing, alloc_piece::source::zeros, {}, 0});
    };
    for (const auto& [k, s] : clusters_) {
        if (s.zero_cluster) continue;
        std::uint64_t cur = k << g_.cluster_bits;
        const std::uint64_t end = cur + g_.cluster_size;
        // Claims overlapping this cluster, in order (claims never overlap).
        auto it = claimed_.upper_bound(cur);
        if (it != claimed_.begin()) --it;
        for (; it != claimed_.end() && it->first < end; ++it) {
            const alloc_claim& c = it->second;
            if (c.pos + c.len <= cur) continue;
            const std::uint64_t s0 = std::max(c.pos, cur);
            const std::uint64_t s1 = std::min(c.pos + c.len, end);
            add_gap(cur, s0 - cur, s);
            if (c.how == alloc_claim::mode::data)
                out.push_back({s0, s1 - s0, alloc_piece::source::data, slice(c.data, s0 - c.pos, s1 - s0), 0});
            else
                out.push_back({s0, s1 - s0, alloc_piece::source::zeros, {}, 0});
            cur = s1;
        }
        add_gap(cur, end - cur, s);
    }
    return out;
}

alloc_plan::writes_plan alloc_plan::writes(const std::vector<alloc_piece>& pieces,
                                           const std::vector<const std::byte*>& backing, std::uint64_t physical,
                                           std::size_t block) const {
    writes_plan out;
    data_writes(pieces, backing, physical, block, out);
    table_writes(physical, block, out);
    return out;
}

// The new data clusters: runs of pieces become one write each; zero fill
// at or past `physical` is left as a hole, and the file made to reach the
// end of the last cluster.
void alloc_plan::data_writes(const std::vector<alloc_piece>& pieces, const std::vector<const std::byte*>& backing,
                             std::uint64_t physical, std::size_t block, writes_plan& out) const {
    // Host offset of a guest position inside a new data cluster.
    auto host_of = [&](std::uint64_t pos) {
        return clusters_.at(pos >> g_.cluster_bits).host + g_.offset_in_cluster(pos);
    };

    std::uint64_t op_start = 0;
    const_buffers op;
    std::uint64_t data_end = start_;  // end of the data region written so far (hole or not)
    bool ends_in_hole = false;
    std::uint64_t hole_start = 0;
    auto close_op = [&] {
        if (!op.empty()) out.writes.push_back({op_start, std::move(op)});
        op.clear();
    };
    auto open_op = [&](std::uint64_t host) {
        if (op.empty()) op_start = host;
    };
    for (const auto& p : pieces) {
        const std::uint64_t host = host_of(p.pos);
        if (p.from == alloc_piece::source::zeros) {
            // Bytes at or past `physical` were never written: they read as
            // zeros already, so leave a hole instead of writing zeros.
            const std::uint64_t written = host < physical ? std::min(p.len, physical - host) : 0;
            if (written) {
                open_op(host);
                append_zeros(op, written);
            }
            if (written < p.len) {
                close_op();
                if (!ends_in_hole) hole_start = host + written;
                ends_in_hole = true;
            } else {
                ends_in_hole = false;
            }
        } else {
            ends_in_hole = false;
            open_op(host);
            if (p.from == alloc_piece::source::data)
                op.insert(op.end(), p.data.begin(), p.data.end());
            else
                op.emplace_back(backing.at(p.backing_buffer), static_cast<std::size_t>(p.len));
        }
        data_end = host + p.len;
    }
    close_op();
    // The file must reach the end of the last new cluster, or the cluster
    // would fall past the (cluster-rounded) end of file on the next open.
    if (ends_in_hole && !has_new_tables()) {
        const std::uint64_t from = std::max(hole_start, data_end - std::min<std::uint64_t>(data_end, block));
        const_buffers tail;
        append_zeros(tail, data_end - from);
        out.writes.push_back({from, std::move(tail)});
    }
}

void alloc_plan::table_writes(std::uint64_t physical, std::size_t block, writes_plan& out) const {
    // New L2 tables are private until L1 points at them: fill them in now
    // and write them. A table (or the part of it) at or past `physical` lies
    // in space the file has never held bytes in, which reads as zeros: only
    // the blocks holding this batch's entries are written, and the file is
    // extended to the end of the batch (the last table), instead of writing
    // a table of up to 1 GiB that is mostly zeros. Below `physical` (old
    // bytes of a fixed-size export, or what a failed batch left) the table
    // is written whole.
    //
    // If power fails after any of these writes (or the extension): the L1
    // does not point at the table yet -- its entry is only set in memory
    // once the batch's writes completed, and the write-back writes L1
    // sectors only after a flush that follows the table writes
    // (table/writeback.hpp) -- so any mix of table blocks, data and file
    // length that landed is unreferenced space past the last cluster in
    // use: a leak at worst, cut off or reused like any space past the end.
    // A file that did not get extended is just shorter; the next open starts
    // allocating at its (cluster-rounded) end. Once that flush completed,
    // the extension and every written block are durable, and the unwritten
    // rest of the table reads as zeros, so the L1 entry written after it
    // links a complete table.
    bool extend = false;
    for (const auto& [l1_index, tu] : tables_) {
        if (!tu.fresh) continue;
        std::vector<std::uint64_t> blocks;  // `block`-byte blocks of the table holding entries
        for (const auto& [k, s] : clusters_) {
            if ((k >> g_.l2_bits) != l1_index) continue;
            const std::uint32_t i = static_cast<std::uint32_t>(k & (g_.table_entries - 1));
            tu.fresh->t[i] = value_of(s);
            blocks.push_back(std::uint64_t{i} * sizeof(std::uint64_t) / block);
        }
        const std::uint64_t off = tu.fresh->offset;
        const std::uint64_t bytes = tu.fresh->t.byte_size();
        const std::byte* raw = tu.fresh->t.raw();
        // Bytes [0, old) of the table may hold old data: write them whole.
        const std::uint64_t old = physical > off ? std::min(bytes, physical - off) : 0;
        if (old)
            out.writes.push_back({off, const_buffers{boost::asio::const_buffer(raw, static_cast<std::size_t>(old))}});
        if (old == bytes) continue;
        extend = true;
        // `blocks` is in entry order (clusters_ is sorted by guest cluster):
        // runs of neighbouring blocks become one write each.
        blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
        for (std::size_t b = 0; b < blocks.size();) {
            std::size_t e = b + 1;
            while (e < blocks.size() && blocks[e] == blocks[e - 1] + 1) ++e;
            const std::uint64_t from = std::max<std::uint64_t>(blocks[b] * block, old);  // below `old`: written already
            const std::uint64_t to = std::min<std::uint64_t>(bytes, (blocks[e - 1] + 1) * block);
            if (from < to)
                out.writes.push_back({off + from, const_buffers{boost::asio::const_buffer(
                                                      raw + from, static_cast<std::size_t>(to - from))}});
            b = e;
        }
    }
    // Written whole, a table would have made the file reach its end; now the
    // file is extended there (to the end of the batch, the last table), so
    // the table lies inside the file on the next open. Only ever larger:
    // nothing is written past end_, and the file holds nothing past
    // `physical` < end_.
    out.resize = extend && end_ > physical;
}

std::vector<l2_update> alloc_plan::l2_updates() const {
    std::vector<l2_update> out;
    for (const auto& [k, s] : clusters_) {
        const table_use& tu = tables_.at(k >> g_.l2_bits);
        if (tu.existing)
            out.push_back({tu.existing, static_cast<std::uint32_t>(k & (g_.table_entries - 1)), value_of(s)});
    }
    return out;
}

std::vector<l1_update> alloc_plan::l1_updates() const {
    std::vector<l1_update> out;
    for (const auto& [l1_index, tu] : tables_)
        if (tu.fresh) out.push_back({l1_index, tu.fresh});
    return out;
}

}  // namespace qed::detail
