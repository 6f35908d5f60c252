// SPDX-License-Identifier: BSL-1.0
// The request layer of one image: where requests start, the
// allocating-write queue they share, and the one place that reads the
// backing file for them.
#pragma once

#include <algorithm>
#include <memory>
#include <vector>

#include "qed/image.hpp"
#include "request/allocating_write.hpp"
#include "request/host.hpp"
#include "table/metadata.hpp"

namespace qed::detail {

/// Buffers the allocating batches read backing-file prefill into, kept for
/// the next batch instead of freed: allocated afresh each time, their pages
/// went back to the kernel with malloc's trimming and were faulted in again
/// by the next read (a quarter of the time of copy-on-write writes over a
/// backing file). Buffers of one cluster (1 MiB at most); larger pieces are
/// allocated and freed as they come; at most 4 MiB are kept.
/// Ownership: a member of request_engine; a batch owns what it took until
/// it gives it back.
class buffer_pool {
public:
    static constexpr std::size_t keep_bytes = 4u << 20;

    /// A buffer of at least `n` bytes, for an image of `cluster_size`.
    aligned_bytes take(std::size_t n, std::size_t cluster_size) {
        const std::size_t unit = std::min<std::size_t>(cluster_size, 1u << 20);
        if (n > unit) return allocate_aligned(n, false);
        if (free_.empty()) return allocate_aligned(unit, false);
        aligned_bytes b = std::move(free_.back());
        free_.pop_back();
        return b;
    }
    /// Give back what take(n, cluster_size) returned.
    void give(aligned_bytes b, std::size_t n, std::size_t cluster_size) {
        const std::size_t unit = std::min<std::size_t>(cluster_size, 1u << 20);
        if (n <= unit && (free_.size() + 1) * unit <= keep_bytes) free_.push_back(std::move(b));
    }

private:
    std::vector<aligned_bytes> free_;
};

/// Ownership: one per image, a member of it. Requests in flight hold the
/// image (the `keep_alive` they start with), and so this.
class request_engine {
public:
    request_engine(metadata& m, request_host& h) : meta(m), host(h), queue(*this) {}
    request_engine(const request_engine&) = delete;
    request_engine& operator=(const request_engine&) = delete;

    // Requests; the caller admitted them (open image, in bounds, not empty).
    // `keep_alive` is held until the handler has been handed over.
    void read(std::shared_ptr<void> keep_alive, std::uint64_t pos, mutable_buffers buffers, io_handler handler);
    void write(std::shared_ptr<void> keep_alive, std::uint64_t pos, const_buffers buffers, write_options options,
               io_handler handler);
    void write_zeroes(std::shared_ptr<void> keep_alive, std::uint64_t pos, std::uint64_t len, zero_options options,
                      op_handler handler);
    void discard(std::shared_ptr<void> keep_alive, std::uint64_t pos, std::uint64_t len, op_handler handler);

    /// Read `buffers` at guest `pos` from the backing file: zeros past its
    /// end (it may be shorter than the image) or when there is none;
    /// errc::backing_file_missing when the image has one that was not
    /// opened (a metadata-only open can't know these bytes). Returns false
    /// when done at once (the handler is then not called).
    bool read_backing(std::uint64_t pos, const mutable_buffers& buffers, op_handler handler);

    metadata& meta;
    request_host& host;
    allocating_write_queue queue;
    buffer_pool prefill;  ///< backing-file prefill buffers, reused
};

}  // namespace qed::detail
