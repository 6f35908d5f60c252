// SPDX-License-Identifier: BSL-1.0
#include "table/l2_cache.hpp"

#include <cassert>

namespace qed::detail {

l2_ref l2_cache::find(std::uint64_t offset) {
    auto it = map_.find(offset);
    if (it == map_.end()) return nullptr;
    lru_.splice(lru_.end(), lru_, it->second->lru);
    return it->second;
}

void l2_cache::insert(const l2_ref& entry) {
    assert(map_.count(entry->offset) == 0);  // each L2 table is cached once: a second copy could lose updates
    entry->lru = lru_.insert(lru_.end(), entry->offset);
    map_.emplace(entry->offset, entry);
    trim();
}

void l2_cache::erase(std::uint64_t offset) {
    auto it = map_.find(offset);
    if (it == map_.end()) return;
    lru_.erase(it->second->lru);
    map_.erase(it);
}

void l2_cache::trim() {
    evict_down_to(capacity_);
}

void l2_cache::make_room() {
    evict_down_to(capacity_ - 1);
}

void l2_cache::evict_down_to(std::size_t n) {
    for (auto it = lru_.begin(); map_.size() > n && it != lru_.end();) {
        auto m = map_.find(*it);
        // use_count 1: only the cache holds it, so nobody can be updating it
        // (the write-back holds every table with unwritten sectors).
        if (m->second.use_count() == 1 && m->second->loaded) {
            assert(m->second->dirty_bits.empty());  // a table with unwritten entries is never evicted
            map_.erase(m);
            it = lru_.erase(it);
        } else {
            ++it;
        }
    }
}

void l2_cache::clear_unused() {
    evict_down_to(0);
}

}  // namespace qed::detail
