// SPDX-License-Identifier: BSL-1.0
// What requests need from the image above them, and nothing more: its
// backing file, its need-check timer, and its request gate. The image
// implements it; the request layer never sees the image itself.
#pragma once

#include <cstdint>
#include <optional>

#include "qed/block_file.hpp"
#include "qed/detail/buffers.hpp"

namespace qed::detail {

/// Threading: called on the image's executor only.
class request_host {
public:
    /// Size of the backing file the image reads through, or nullopt when no
    /// backing file was opened (none, or a metadata-only open).
    virtual std::optional<std::uint64_t> backing_size() const noexcept = 0;
    /// Read backing-file bytes [pos, pos + size of `buffers`), which lie
    /// inside backing_size(); the handler never runs inside this call.
    virtual void read_backing(std::uint64_t pos, mutable_buffers buffers, op_handler handler) = 0;

    /// The allocating-write queue is about to run a batch (allocations are
    /// under way: the need-check timer must not fire).
    virtual void allocations_busy() = 0;
    /// The queue ran its last batch and nobody waits (the timer may start).
    virtual void allocations_idle() = 0;

    /// A request the image admitted through its gate has completed.
    virtual void request_done() = 0;

protected:
    ~request_host() = default;
};

}  // namespace qed::detail
