// SPDX-License-Identifier: BSL-1.0
// The request layer of one image: where requests start, the
// allocating-write queue they share, and the one place that reads the
// backing file for them.
#pragma once

#include <memory>

#include "qed/image.hpp"
#include "request/allocating_write.hpp"
#include "request/host.hpp"
#include "table/metadata.hpp"

namespace qed::detail {

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
};

}  // namespace qed::detail
