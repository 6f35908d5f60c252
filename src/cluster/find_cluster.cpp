// SPDX-License-Identifier: BSL-1.0
#include "cluster/find_cluster.hpp"

#include "image/qed_image.hpp"

#include <algorithm>

namespace qed::detail {

lookup find_cluster(qed_image& img, l2_ref& held, std::uint64_t pos, std::uint64_t len) {
    const geometry& g = img.geo_;
    lookup r;
    // Stop at the end of this L2 table's range.
    const std::uint64_t span = g.l2_span();
    len = std::min(len, span - (pos & (span - 1)));

    const std::uint64_t l2_offset = (*img.l1_)[g.l1_index(pos)];
    if (l2_offset == 0) {
        r.run = {cluster_run::kind::no_table, 0, len};
        return r;
    }
    if (!img.valid_l2_offset(l2_offset)) {
        r.ec = errc::invalid_l2_offset;
        return r;
    }
    if (!held || held->offset != l2_offset) {
        held = img.cache_.find(l2_offset);
    }
    if (!held || !held->loaded) {
        held.reset();
        r.need_table = true;
        r.table_offset = l2_offset;
        return r;
    }

    const table& t = held->t;
    const std::uint32_t first = g.l2_index(pos);
    const std::uint64_t in_cluster = g.offset_in_cluster(pos);
    const std::uint64_t n = g.clusters_for(in_cluster + len);  // never past the table: len was clipped
    const std::uint64_t e0 = t[first];
    std::uint64_t count = 1;
    if (e0 == 0 || e0 == zero_cluster_entry) {
        while (count < n && t[first + count] == e0) ++count;
        r.run.what = e0 == 0 ? cluster_run::kind::unallocated : cluster_run::kind::zero;
    } else {
        if (!img.valid_data_offset(e0)) {
            r.ec = errc::invalid_cluster_offset;
            return r;
        }
        // Contiguous in the file; an invalid entry ends the run (the next
        // lookup reports it).
        while (count < n && t[first + count] == e0 + count * g.cluster_size &&
               img.valid_data_offset(t[first + count]))
            ++count;
        r.run.what = cluster_run::kind::data;
        r.run.host_offset = e0 + in_cluster;
    }
    r.run.length = std::min(len, count * g.cluster_size - in_cluster);
    return r;
}

void load_l2(qed_image& img, std::uint64_t offset, op_handler handler) {
    if (auto e = img.cache_.find(offset)) {
        if (e->loaded) {
            boost::asio::post(img.get_executor(),
                              [h = std::move(handler)]() mutable { std::move(h)(std::error_code{}); });
        } else {
            e->waiters.push_back(std::move(handler));  // share the load in flight
        }
        return;
    }
    img.cache_.make_room();  // before allocating: the table may be 1 GiB
    auto entry = std::make_shared<l2_entry>(offset, img.geo_.table_entries);
    entry->waiters.push_back(std::move(handler));
    img.cache_.insert(entry);
    img.file_->debug_event(blkdbg_event::l2_load);
    async_read_table(*img.file_, offset, entry->t, [&img, entry](std::error_code ec) {
        if (ec) img.cache_.erase(entry->offset);  // can't trust a failed read
        else entry->loaded = true;
        auto waiters = std::move(entry->waiters);
        for (auto& w : waiters) std::move(w)(ec);
    });
}

l2_ref cached_table(qed_image& img, std::uint64_t l1_index, bool& missing, bool& invalid) {
    missing = invalid = false;
    const std::uint64_t off = (*img.l1_)[l1_index];
    if (off == 0) {
        missing = true;
        return nullptr;
    }
    if (!img.valid_l2_offset(off)) {
        invalid = true;
        return nullptr;
    }
    auto e = img.cache_.find(off);
    if (e && !e->loaded) return nullptr;
    return e;
}

}  // namespace qed::detail
