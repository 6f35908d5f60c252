// SPDX-License-Identifier: BSL-1.0
// One request (read, write, write-zeroes or discard) as a composed
// operation: the seed's state machine, one named state per step, advanced
// by step(), walking the request's range one cluster run at a time.
//
//   seed step (QEMU's block/qed.c, 2010)   here
//   ------------------------------------   ------------------------------------------------
//   qed_aio_next_io                        state::next_io      the next run, or done
//   qed_find_cluster                       state::find_cluster cluster/find_cluster (memory),
//                                                              metadata::load_l2 on a miss
//   qed_aio_read_data                      state::read_data    read_data(): file, backing, zeros
//   qed_aio_write_inplace,                 state::write_inplace write_inplace(): clusters linked
//     qed_aio_write_main (in place)                            already, nobody to wait for
//   qed_aio_write_alloc                    state::write_alloc  enqueue(): wait for the queue
//   qed_aio_write_prefill / _postfill      -- batch: prefill      (request/allocating_write)
//   mark dirty (qed_write_header)          -- batch: mark_dirty
//   qed_aio_write_main (new clusters)      -- batch: write_main
//   qed_aio_write_flush_before_l2_update   -- write-back round: flush_data (table/writeback)
//   qed_aio_write_l2_update                -- batch: update (memory), round: tables (disk)
//   qed_aio_write_l1_update,               -- batch: update (memory), round: flush_tables, l1
//     qed_commit_l2_update
//   qed_aio_complete                       state::flush_fua, state::complete
//   (later QEMU: write-zeroes, discard)    state::zero_inplace, state::discard_data
//
// Moved into the batch: from "prefill" to "L1 update" the seed runs one
// allocating request at a time; here the request at the head of the queue
// carries every compatible waiting request with it, and they share one set
// of prefill reads, data writes and table updates (cluster/alloc_plan).
// Moved into the write-back round: the flush before the L2 update and the
// L2/L1 writes. A request completes once its data is written and linked in
// memory; the round writes the changed table sectors of many batches at
// once, with one flush, in QED's order (data before the entry that links
// it when there is a backing file; a new table before the L1 entry). A
// flush (or FUA) waits for a round covering it, so durability is that of a
// disk with a write cache, as the seed's callers expect.
#pragma once

#include <memory>
#include <variant>

#include "cluster/alloc_plan.hpp"
#include "cluster/find_cluster.hpp"
#include "qed/image.hpp"

namespace qed::detail {

class request_engine;

/// Ownership: created by request_engine, owned by itself until complete()
/// deletes it (the allocating-write queue holds a plain pointer meanwhile).
class aiocb {
public:
    enum class kind { read, write, write_zeroes, discard };
    using any_handler = std::variant<io_handler, op_handler>;
    using any_buffers = std::variant<std::monostate, mutable_buffers, const_buffers>;

    /// Start a request over [pos, pos + len).
    static void start(request_engine& eng, std::shared_ptr<void> keep_alive, kind k, std::uint64_t pos,
                      std::uint64_t len, any_buffers buffers, bool fua, bool may_unmap, any_handler handler);

    // ---- called by the allocating-write queue -----------------------------
    const alloc_claim& claim() const noexcept { return claim_; }
    /// Our turn at the head of the queue (or our clusters were allocated by
    /// someone else): look the range up again and go on.
    void queue_turn();
    /// The batch carrying our claim finished.
    void alloc_done(std::error_code ec);

private:
    enum class state {
        next_io,        ///< the next run of the range, or done
        find_cluster,   ///< where the run's bytes live (loading its L2 table)
        read_data,      ///< read: from the file, the backing file, or zeros
        write_inplace,  ///< write: into clusters already linked
        write_alloc,    ///< write: waiting for the allocating-write queue
        zero_inplace,   ///< write-zeroes: over clusters already linked
        discard_data,   ///< discard: give whole data clusters back
        run_done,       ///< the run is done: move past it
        flush_fua,      ///< force unit access: durable before completing
        complete,       ///< hand the result over, wake nobody else
    };

    aiocb(request_engine& eng, std::shared_ptr<void> keep_alive, kind k, std::uint64_t pos, std::uint64_t len,
          any_handler handler);

    void step(std::error_code ec = {});
    auto resume() {
        return [this](std::error_code ec) { step(ec); };
    }
    state route(const cluster_run& run);
    bool read_data(const cluster_run& run);
    void write_inplace(const cluster_run& run);
    void zero_inplace(const cluster_run& run);
    bool discard_data(const cluster_run& run);
    state claim_run(alloc_claim::mode how, std::uint64_t len);
    void complete();
    template <class Buffers>
    Buffers run_buffers() const {
        return slice(std::get<Buffers>(buffers_), static_cast<std::size_t>(pos_ - start_),
                     static_cast<std::size_t>(cur_len_));
    }

    request_engine& eng_;
    std::shared_ptr<void> keep_alive_;
    kind kind_;
    state state_ = state::next_io;
    std::uint64_t start_;  ///< first guest byte of the request
    std::uint64_t pos_;    ///< next guest byte to handle
    std::uint64_t end_;
    std::uint64_t cur_len_ = 0;  ///< bytes of the run in progress
    cluster_run run_;            ///< the run in progress
    l2_ref l2_;                  ///< table of the current run (kept from eviction)
    bool fua_ = false;
    bool may_unmap_ = true;
    bool waited_ = false;  ///< some step waited for I/O (so start() has returned)
    any_buffers buffers_;
    any_handler handler_;
    alloc_claim claim_;
    std::error_code error_;
};

}  // namespace qed::detail
