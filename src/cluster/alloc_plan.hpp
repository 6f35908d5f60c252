// SPDX-License-Identifier: BSL-1.0
// The plan of one allocating batch, apart from the I/O that carries it out
// (request/allocating_write): which claims travel together, where their new
// clusters and L2 tables go, how each new cluster is filled (the claims'
// bytes, zeros, or prefill/postfill from the backing file), what is written
// where, and which table entries change. Pure: no I/O, nothing outside the
// plan changes but the new (still private) tables it fills in.
#pragma once

#include <functional>
#include <map>
#include <vector>

#include "format/layout.hpp"
#include "qed/detail/buffers.hpp"
#include "table/allocator.hpp"
#include "table/l2_cache.hpp"

namespace qed::detail {

/// What a request asks the allocating-write queue for: one run of its range
/// (inside one L2 table) that has no data clusters yet.
struct alloc_claim {
    enum class mode {
        data,           ///< write the request's bytes into new clusters
        zero_data,      ///< write zeros into new clusters (partial write-zeroes)
        zero_clusters,  ///< whole clusters become zero clusters (no data)
    };
    std::uint64_t pos = 0;
    std::uint64_t len = 0;
    mode how = mode::data;
    const_buffers data;  ///< mode::data: the bytes
};

/// Part of a new cluster run, in guest order.
struct alloc_piece {
    enum class source { data, zeros, backing };
    std::uint64_t pos, len;
    source from;
    const_buffers data;              ///< source::data: the claim's bytes
    std::size_t backing_buffer = 0;  ///< source::backing: which buffer holds them once read
};

/// One write of the batch: `bytes` at host offset `offset`.
struct alloc_write {
    std::uint64_t offset;
    const_buffers bytes;
};

/// An L2 entry that changes in a table already linked (`table`), or an L1
/// entry that comes to point at a new table (`l1_index`).
struct l2_update {
    l2_ref table;
    std::uint32_t index;
    std::uint64_t value;
};
struct l1_update {
    std::uint64_t l1_index;
    l2_ref table;
};

/// Ownership: a value inside its batch.
class alloc_plan {
public:
    /// How much one batch may carry (the first claim always goes, whatever its size).
    static constexpr std::size_t max_claims = 1024;
    static constexpr std::uint64_t max_bytes = 64ull << 20;

    /// Where a claim's L2 table stands: in memory (returned), not there yet
    /// (`missing`: L1 entry 0), or not usable (`invalid`, or null and not
    /// missing: being loaded).
    using table_lookup = std::function<l2_ref(std::uint64_t l1_index, bool& missing, bool& invalid)>;

    explicit alloc_plan(const geometry& g) : g_(g) {}

    /// Join the batch if compatible: no byte claimed twice, no cluster both
    /// zero cluster and data, every cluster still unallocated, the claim's
    /// table in memory or not there yet, within the size limits.
    bool absorb(const alloc_claim& c, const table_lookup& tables);
    std::size_t claims() const noexcept { return claimed_.size(); }
    std::uint64_t new_data_clusters() const noexcept { return new_data_clusters_; }
    bool has_new_tables() const noexcept;

    /// Give the new clusters their space at the allocator's end: data
    /// clusters first, in guest order (sequential writes give a sequential
    /// file), then the new L2 tables, each made by `new_table(offset)`.
    void place(cluster_allocator& alloc, const std::function<l2_ref(std::uint64_t offset)>& new_table);
    /// [start, end) of the file the batch took (after place()).
    std::uint64_t start() const noexcept { return start_; }
    std::uint64_t end() const noexcept { return end_; }

    /// Every new data cluster split into the claims' bytes and the gaps
    /// around them (prefill / postfill), each with its source: zeros in a
    /// zero cluster or past the backing file's end, else the backing file.
    /// Backing pieces are numbered (backing_buffer) in order.
    std::vector<alloc_piece> pieces(bool has_backing, std::uint64_t backing_size) const;

    struct writes_plan {
        std::vector<alloc_write> writes;
        bool resize = false;  ///< extend the file to end()
    };
    /// The writes that put the pieces and the new tables in place.
    /// `backing[i]` holds backing piece i; `physical` is how far the file
    /// held bytes before the batch (zero fill past it is left to the file
    /// as a hole); `block` the metadata write size. Fills the new tables'
    /// entries.
    writes_plan writes(const std::vector<alloc_piece>& pieces, const std::vector<const std::byte*>& backing,
                       std::uint64_t physical, std::size_t block) const;

    /// The table entries the batch changes once its data is in place.
    std::vector<l2_update> l2_updates() const;
    std::vector<l1_update> l1_updates() const;

private:
    struct slot {                 // one guest cluster in the batch
        std::uint64_t old_entry;  // 0 (unallocated) or 1 (zero cluster)
        bool zero_cluster;        // becomes a zero cluster, no data
        std::uint64_t host = 0;   // new data cluster offset (after place())
    };
    struct table_use {    // one L2 table the batch touches
        l2_ref existing;  // loaded table, or
        l2_ref fresh;     // a new table (L1 entry was 0; after place())
    };
    std::uint64_t value_of(const slot& s) const noexcept { return s.zero_cluster ? zero_cluster_entry : s.host; }
    void data_writes(const std::vector<alloc_piece>& pieces, const std::vector<const std::byte*>& backing,
                     std::uint64_t physical, std::size_t block, writes_plan& out) const;
    void table_writes(std::uint64_t physical, std::size_t block, writes_plan& out) const;

    geometry g_;
    std::map<std::uint64_t, slot> clusters_;        // guest cluster index -> slot
    std::map<std::uint64_t, table_use> tables_;     // L1 index -> table
    std::map<std::uint64_t, alloc_claim> claimed_;  // claims by guest start (never overlapping)
    std::uint64_t new_data_clusters_ = 0;
    std::uint64_t start_ = 0, end_ = 0;
};

}  // namespace qed::detail
