// SPDX-License-Identifier: BSL-1.0
// Many requests in flight: a pool that runs numbered jobs (each a chain of
// asynchronous steps) with a bounded number in flight, for the commands
// that copy or compare data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "common/driver.hpp"

namespace qed::tools {

/// A job's completion: call exactly once, from a handler or inline.
using job_done = std::function<void(std::error_code)>;
using job_fn = std::function<void(std::uint64_t index, job_done done)>;

struct job_options {
    unsigned depth = 16;  ///< jobs in flight at most
    /// Checked before each start: true stops starting new jobs (early exit).
    std::function<bool()> stop;
    /// Called after each job completes, with the number completed so far.
    std::function<void(std::uint64_t)> progress;
};

/// Run jobs 0 .. count-1, started in index order. After the first failure
/// no new job starts; returns the first error once every started job ended.
std::error_code run_jobs(driver& d, std::uint64_t count, job_fn job, job_options options = {});

/// One asynchronous step of a chain.
using step_fn = std::function<void(job_done)>;

/// Run `steps` one after another; `done` gets the first error, or success.
void run_steps(std::shared_ptr<std::vector<step_fn>> steps, job_done done, std::size_t first = 0);

/// Heap memory aligned for O_DIRECT transfers.
class aligned_buffer {
public:
    aligned_buffer() = default;
    explicit aligned_buffer(std::size_t size);
    std::byte* data() const noexcept { return data_.get(); }
    std::size_t size() const noexcept { return size_; }

private:
    struct release {
        std::size_t size;  ///< bytes allocated (rounded up)
        void operator()(std::byte* p) const noexcept;
    };
    std::unique_ptr<std::byte, release> data_;
    std::size_t size_ = 0;
};

/// True when all `n` bytes at `p` are zero.
bool is_zero(const std::byte* p, std::size_t n) noexcept;

}  // namespace qed::tools
