// SPDX-License-Identifier: BSL-1.0
// Write-back of table updates.
//
// An allocating write completes once its data is written and its L2 entries
// are updated in memory; the changed sectors reach the disk in rounds run by
// this class, one at a time, in the background. Every flush (and FUA write,
// check, close) waits for a round that covers everything changed before it
// started, then flushes: a write that completed before a completed flush is
// durable, exactly the contract of a disk with a write cache.
//
// A round copies the dirty sectors when it begins (entries changed later
// wait for the next round, whose flush covers their data) and keeps QED's
// on-disk ordering:
//   1. flush first when the image has a backing file, so no L2 entry reaches
//      the disk before the data (and backing prefill) it points to; or when
//      NEED_CHECK was just set, so it is durable before any new entry is;
//   2. write the dirty sectors of every dirty L2 table (in parallel);
//   3. if L1 entries changed: flush (new tables, written whole by their batch,
//      must be durable before L1 points at them), then write the L1 sectors;
//   4. flush when a waiter asked for durability.
// A failed write marks its sectors dirty again and fails the round's
// waiters; a later round retries. Dirty tables are held here, so the cache
// never evicts an update that is not on disk.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <functional>
#include <memory>
#include <vector>

#include "table/l2_cache.hpp"

namespace qed::detail {

/// Ownership: one per image, owned by its metadata; a round in flight is a
/// heap object that deletes itself when done and keeps the owner alive
/// through target::keep_alive. Used on the image's executor only.
class table_writeback {
public:
    struct target {
        block_file* file = nullptr;
        std::size_t align = 512;  ///< sector size of table writes
        table* l1 = nullptr;
        std::uint64_t l1_offset = 0;
        /// True when L2 entries must wait for a flush: the image has a backing
        /// file, or NEED_CHECK was set and may not be durable yet.
        std::function<bool()> flush_before_l2;
        /// Called after that flush succeeded.
        std::function<void()> flushed;
        /// Keeps the owner alive while a round is in flight (the owner may
        /// be dropped by its users while its metadata is still being written).
        std::function<std::shared_ptr<void>()> keep_alive;
    };

    explicit table_writeback(boost::asio::any_io_executor ex) : ex_(std::move(ex)) {}
    void attach(target t) { target_ = std::move(t); }

    /// Entries [first, first + count) of `t` changed in memory.
    void mark(const l2_ref& t, std::uint32_t first, std::uint32_t count);
    void mark_l1(std::uint32_t first, std::uint32_t count);
    bool dirty() const noexcept { return !tables_.empty() || !l1_bits_.empty(); }

    /// Start a round in the background unless one runs already.
    void kick();
    /// Complete when everything marked before this call is written (and,
    /// with `durable`, flushed).
    void sync(bool durable, op_handler handler);
    /// Forget every pending update (the tables were unlinked).
    void discard();

private:
    struct run {                               // a run of dirty sectors in one table
        l2_ref table;                          // null: the L1 table
        std::size_t first, count;              // in sectors
        std::shared_ptr<aligned_bytes> bytes;  // the sectors as they were when the round began
    };
    class round;

    std::vector<run> take_runs(bool l1);
    void remark(const run& r);
    void mark_table(const l2_ref& t);
    void snapshot(run& r) const;
    std::size_t run_bytes(const run& r) const;
    void start_round();
    void round_done(std::error_code ec, std::vector<op_handler> waiters);
    std::size_t sectors_of(std::size_t table_bytes) const { return (table_bytes + target_.align - 1) / target_.align; }

    boost::asio::any_io_executor ex_;
    target target_;
    std::vector<l2_ref> tables_;          // tables with dirty sectors (each once)
    std::vector<std::uint64_t> l1_bits_;  // dirty L1 sectors (empty: none)
    bool running_ = false;
    bool retry_ = true;  // false after a failed round until new marks
    std::vector<op_handler> next_waiters_;
    bool next_durable_ = false;
};

}  // namespace qed::detail
