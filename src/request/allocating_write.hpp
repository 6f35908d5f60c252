// SPDX-License-Identifier: BSL-1.0
// The allocating-write queue and the batch it runs.
//
// The design's rule stands: one allocating write proceeds at a time. But the
// request at the head of the queue carries more than itself: it absorbs the
// waiting requests whose claims don't overlap its bytes (same clusters,
// neighbouring clusters, other L2 tables) and allocates for all of them with
// one set of I/Os. The plan (which claims, where their clusters go, what is
// written where, which entries change) is cluster/alloc_plan; the batch
// carries it out, one named state after the other:
//
//   mark_dirty  NEED_CHECK written once (no backing file; the write-back
//               flushes it before the first table entry)
//   prefill     prefill/postfill data read from the backing file
//   write_main  data and new L2 tables written (in parallel; zero fill is
//               skipped where the file has never held bytes, so it reads as
//               zeros anyway)
//   update      L2 entries (and L1 entries of new tables) updated in memory:
//               readers see the new clusters now that their data is in place
//   done        every member goes on with its next run.
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
//   - after mark_dirty: NEED_CHECK set (or not yet durable), nothing else
//     changed. Harmless.
//   - during write_main: new clusters lie past every L2 entry's reach, so
//     any mix of them landing is invisible (leaked space at worst).
//   - after done, before a flush: the L2/L1 sectors may or may not be on
//     disk (write-back). Without a backing file an entry may point at a
//     cluster whose data never landed (reads as zeros: the old contents) or
//     past the end of the file; NEED_CHECK is set, so the next read-write
//     open repairs it. With a backing file the round flushed the data first,
//     so an entry never exposes a cluster missing its backing prefill.
//   - a new L2 table is complete and flushed before L1 points at it.
//   - after a completed flush: everything completed before it is durable.
#pragma once

#include <deque>
#include <vector>

#include "block_file/completion.hpp"
#include "cluster/alloc_plan.hpp"

namespace qed::detail {

class aiocb;
class request_engine;
class allocating_write;

/// Ownership: one per image, inside its request_engine. The aiocbs waiting
/// in it are owned by themselves (they delete themselves on completion,
/// which happens only after they left the queue).
class allocating_write_queue {
public:
    explicit allocating_write_queue(request_engine& eng) : eng_(eng) {}

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

    request_engine& eng_;
    std::deque<aiocb*> waiting_;
    aiocb* turn_ = nullptr;  ///< the waiter whose turn it is right now
    bool busy_ = false;
    bool plugged_ = false;
};

/// One batch of allocating writes (see the comment at the top).
/// Ownership: created by the queue, deletes itself when done.
class allocating_write {
public:
    explicit allocating_write(request_engine& eng);

    /// Join the batch if compatible. The head always joins.
    bool absorb(aiocb* a);
    void run();

private:
    enum class state { mark_dirty, prefill, write_main, update, done };

    void step(std::error_code ec = {});
    bool read_prefill();  // true: nothing left in flight
    bool write_main();    // true: nothing left in flight
    void update();
    void finish();
    void deliver();
    void one_done(std::error_code ec) {
        if (group_.done(ec)) step(group_.error());
    }

    request_engine& eng_;
    alloc_plan plan_;
    state state_ = state::mark_dirty;
    std::vector<aiocb*> members_;
    std::uint64_t physical_before_ = 0;  ///< how far the file held bytes before the batch
    std::vector<alloc_piece> pieces_;
    std::vector<aligned_bytes> backing_buffers_;
    alloc_plan::writes_plan writes_;
    bool tables_touched_ = false;  ///< L1/L2 updated in memory: no rollback
    bool inside_run_ = false;      ///< run() has not returned yet
    fan_in group_;
    std::error_code error_;
};

}  // namespace qed::detail
