// SPDX-License-Identifier: BSL-1.0
// The L2 table cache: write-through, reference-counted, bounded.
//
// Every L2 table in memory is in this cache, exactly once: a table a request
// is using is never evicted (eviction only takes entries nobody else holds),
// so an update can never be lost to a stale second copy. When every entry is
// in use the cache holds more than its capacity until requests let go;
// memory stays bounded by capacity + requests in flight.
//
// Two requests that miss on the same table share one load: the second waits
// on the entry the first created.
#pragma once

#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "table/table.hpp"

namespace qed::detail {

struct l2_entry {
    l2_entry(std::uint64_t off, std::uint32_t entries) : offset(off), t(entries) {}
    std::uint64_t offset;  ///< file offset of the table
    table t;
    bool loaded = false;  ///< false while the first read is in flight
    /// Sectors that differ from disk (see writeback.hpp), empty when none;
    /// while any is set the write-back holds a reference, so the entry can't
    /// be evicted.
    std::vector<std::uint64_t> dirty_bits;
    std::vector<op_handler> waiters;  ///< requests waiting for the load
    std::list<std::uint64_t>::iterator lru;
};
using l2_ref = std::shared_ptr<l2_entry>;

/// Ownership: one per image, owned by its metadata; entries are shared
/// (l2_ref) by the cache, the write-back and the requests using them, and
/// freed when the last of them lets go. Used on the image's executor only.
class l2_cache {
public:
    explicit l2_cache(std::size_t capacity) : capacity_(capacity ? capacity : 1) {}

    /// The entry for `offset` (loaded or loading), or null. Marks it recently used.
    l2_ref find(std::uint64_t offset);
    /// Insert a new entry (loading or already loaded), evicting unused entries.
    void insert(const l2_ref& entry);
    /// Remove an entry (after a failed load).
    void erase(std::uint64_t offset);
    /// Drop every entry nobody is using; used entries stay.
    void clear_unused();
    /// Bring the cache back within capacity after requests released entries.
    void trim();
    /// Evict unused entries until one more fits within capacity: called
    /// before a new table is allocated, so a cache of huge tables (up to
    /// 1 GiB each) never holds the evicted one and the new one at once.
    void make_room();

    /// Change the most entries kept (at least 1), evicting unused ones.
    void set_capacity(std::size_t capacity) {
        capacity_ = capacity ? capacity : 1;
        trim();
    }

    std::size_t size() const noexcept { return map_.size(); }
    std::size_t capacity() const noexcept { return capacity_; }

private:
    void evict_down_to(std::size_t n);  // unused, loaded entries, least recently used first

    std::size_t capacity_;
    std::unordered_map<std::uint64_t, l2_ref> map_;
    std::list<std::uint64_t> lru_;  // front = least recently used
};

}  // namespace qed::detail
