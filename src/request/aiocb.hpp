// SPDX-License-Identifier: BSL-1.0
// One request (read, write, write-zeroes or discard) walking its range one cluster
// run at a time, as the seed's state machine does:
//
//   next_io -> find_cluster (L1 -> L2 cache -> L2 read)
//     read:   data  -> read the file          -> next_io
//             zero  -> zeros                  -> next_io
//             unallocated -> backing file or zeros -> next_io
//     write:  data  -> write in place (no waiting on anyone) -> next_io
//             otherwise -> allocating-write queue; the batch it joins marks
//             the image dirty, prefills/postfills, writes the data, flushes
//             (backing file), updates L2 (and L1) -> alloc_done -> next_io
//   ... -> finish (FUA flush first when asked) -> the user's handler.
#pragma once

#include "cluster/find_cluster.hpp"
#include "qed/image.hpp"

#include <memory>

namespace qed::detail {

class qed_image;

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

class aiocb {
public:
    enum class kind { read, write, write_zeroes, discard };

    static void start_read(std::shared_ptr<qed_image> img, std::uint64_t pos, mutable_buffers buffers,
                           io_handler handler);
    static void start_write(std::shared_ptr<qed_image> img, std::uint64_t pos, const_buffers buffers,
                            write_options options, io_handler handler);
    static void start_write_zeroes(std::shared_ptr<qed_image> img, std::uint64_t pos, std::uint64_t len,
                                   zero_options options, op_handler handler);
    static void start_discard(std::shared_ptr<qed_image> img, std::uint64_t pos, std::uint64_t len,
                              op_handler handler);

    // ---- called by the allocating-write queue -----------------------------
    const alloc_claim& claim() const noexcept { return claim_; }
    /// Our turn at the head of the queue (or our clusters were allocated by
    /// someone else): look the range up again and go on.
    void queue_turn() { next_io(); }
    /// The batch carrying our claim finished.
    void alloc_done(std::error_code ec) { run_done(ec); }

private:
    aiocb(std::shared_ptr<qed_image> img, kind k, std::uint64_t pos, std::uint64_t len);

    void next_io();
    bool do_read(const cluster_run& run);
    bool do_write(const cluster_run& run);
    bool do_write_zeroes(const cluster_run& run);
    bool do_discard(const cluster_run& run);
    void enqueue(alloc_claim::mode how, std::uint64_t len);
    void run_done(std::error_code ec);
    void finish(std::error_code ec);

    std::shared_ptr<qed_image> img_;
    kind kind_;
    std::uint64_t start_;     ///< first guest byte of the request
    std::uint64_t pos_;       ///< next guest byte to handle
    std::uint64_t end_;
    std::uint64_t cur_len_ = 0;  ///< bytes of the run in progress
    l2_ref l2_;               ///< table of the current run (kept from eviction)
    bool went_async_ = false; ///< false until the first asynchronous step
    bool fua_ = false;
    bool may_unmap_ = true;
    mutable_buffers read_buffers_;
    const_buffers write_buffers_;
    io_handler io_handler_;
    op_handler op_handler_;
    alloc_claim claim_;
};

}  // namespace qed::detail
