// SPDX-License-Identifier: BSL-1.0
// The allocating-write queue and the batch it runs.
//
// The design's rule stands: one allocating write proceeds at a time. But the
// request at the head of the queue carries more than itself: it absorbs the
// waiting requests whose claims don't overlap its bytes (same clusters,
// neighbouring clusters, other L2 tables) and allocates for all of them with
// one set of I/Os:
//
//   mark dirty (NEED_CHECK written once, no backing file; the write-back
//   flushes it before the first table entry)
//   -> read prefill/postfill data from the backing file
//   -> write data and new L2 tables (in parallel; zero fill is skipped where
//      the file has never held bytes, so it reads as zeros anyway)
//   -> update L2 entries (and L1 entries of new tables) in memory: readers
//      see the new clusters now that their data is in place
//   -> every member goes on with its next run.
// The changed table sectors reach the disk in write-back rounds
// (table/writeback.hpp), which keep QED's order: with a backing file, data
// flushed before any L2 entry to it; new tables flushed before L1 points at
// them. A flush waits for a round covering everything completed before it.
//
// When the batch ends, waiting requests whose clusters are now allocated
// continue at once as in-place writes; the first one still needing
// allocation becomes the next head.
//
// Crash reasoning (what the file holds if power fails after each step):
//   - after "mark dirty": NEED_CHECK set (or not yet durable), nothing else
//     changed. Harmless.
//   - during data writes: new clusters lie past every L2 entry's reach, so
//     any mix of them landing is invisible (leaked space at worst).
//   - after completion, before a flush: the L2/L1 sectors may or may not be
//     on disk (write-back). Without a backing file an entry may point at a
//     cluster whose data never landed (reads as zeros: the old contents) or
//     past the end of the file; NEED_CHECK is set, so the next read-write
//     open repairs it. With a backing file the round flushed the data first,
//     so an entry never exposes a cluster missing its backing prefill.
//   - a new L2 table is complete and flushed before L1 points at it.
//   - after a completed flush: everything completed before it is durable.
#pragma once

#include "qed/block_file.hpp"
#include "qed/detail/buffers.hpp"
#include "table/l2_cache.hpp"

#include <deque>
#include <map>
#include <vector>

namespace qed::detail {

class aiocb;
class qed_image;
class allocating_write;

class allocating_write_queue {
public:
    explicit allocating_write_queue(qed_image& img) : img_(img) {}

    /// `a` needs clusters for a->claim(): start a batch now, or wait.
    void enqueue(aiocb* a);
    /// Hold batches back while the need-check bit is being cleared.
    void plug() { plugged_ = true; }
    void unplug();
    /// No batch running and nobody waiting.
    bool idle() const noexcept { return !busy_ && waiting_.empty(); }

private:
    friend class allocating_write;
    void start_batch(aiocb* head);
    void batch_done();
    void release_waiters();
    bool still_needs_allocation(const aiocb* a);

    qed_image& img_;
    std::deque<aiocb*> waiting_;
    aiocb* turn_ = nullptr;  ///< the waiter whose turn it is right now
    bool busy_ = false;
    bool plugged_ = false;
};

/// One batch of allocating writes (see the comment at the top).
class allocating_write {
public:
    allocating_write(qed_image& img, allocating_write_queue& queue) : img_(img), queue_(queue) {}

    /// Join the batch if compatible. The head always joins.
    bool absorb(aiocb* a);
    bool empty() const noexcept { return members_.empty(); }
    void run();

private:
    enum class state { mark_dirty, prefill, write, update, done };

    struct slot {                  // one guest cluster in the batch
        std::uint64_t old_entry;   // 0 (unallocated) or 1 (zero cluster)
        bool zero_cluster;         // becomes a zero cluster, no data
        std::uint64_t host = 0;    // new data cluster offset
    };
    struct table_use {             // one L2 table the batch touches
        l2_ref existing;           // loaded table, or
        l2_ref fresh;              // a new table (L1 entry was 0)
    };
    struct piece {                 // part of a new cluster run, in guest order
        std::uint64_t pos, len;
        enum class source { data, zeros, backing } from;
        const_buffers data;
        std::size_t backing_buffer = 0;
    };

    void step();
    void plan();
    void issue_prefill();
    void issue_writes();
    void issue_updates();
    void finish();
    void one_done(std::error_code ec);
    void start(unsigned n) { pending_ = n; }
    std::uint64_t entry_of(std::uint64_t cluster) const;

    qed_image& img_;
    allocating_write_queue& queue_;
    state state_ = state::mark_dirty;
    std::vector<aiocb*> members_;
    std::map<std::uint64_t, slot> clusters_;        // guest cluster index -> slot
    std::map<std::uint64_t, table_use> tables_;     // L1 index -> table
    struct claimed_range {
        std::uint64_t end;
        const aiocb* owner;
    };
    std::map<std::uint64_t, claimed_range> claimed_;  // guest byte ranges by start
    std::uint64_t new_data_clusters_ = 0;

    std::uint64_t batch_start_ = 0, batch_end_ = 0, phys_before_ = 0;
    std::vector<piece> pieces_;
    std::vector<aligned_bytes> backing_buffers_;
    std::vector<std::pair<std::uint64_t, const_buffers>> writes_;
    bool tables_touched_ = false;  // L1/L2 updated in memory: no rollback
    bool went_async_ = false;      // some I/O completed (so we are not inside enqueue())
    unsigned pending_ = 0;
    std::error_code error_;
};

}  // namespace qed::detail
