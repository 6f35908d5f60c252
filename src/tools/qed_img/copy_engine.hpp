// SPDX-License-Identifier: BSL-1.0
// The data mover behind convert, commit and rebase: a list of guest ranges,
// each to copy, zero or bring up to date, carried out in cells with many
// requests in flight.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/driver.hpp"

namespace qed::tools::img {

struct segment {
    enum class action {
        copy,    ///< read from the source, write to the target
        zero,    ///< make the target read zeros here
        update,  ///< write the source's bytes where they differ from the reference's
    };
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    action what = action::copy;
};

/// Which image an operation of a failed copy was on.
enum class copy_side { none, source, reference, target };

struct copy_plan {
    image source;
    image target;
    /// What `update` compares against (reads past reference_size are
    /// zeros). No image: the reference reads as zeros throughout.
    image reference;
    std::uint64_t reference_size = 0;
    /// Zero blocks inside `copy` ranges need no write: the target already
    /// reads zeros there (a new image without a backing file).
    bool target_reads_zeros = false;
    /// Look for zero blocks in copied data (qemu-img convert -S); false
    /// writes every byte as data.
    bool detect_zeroes = true;
    std::uint64_t zero_block = 4096;
    unsigned depth = 16;  ///< cells in flight
    std::uint64_t cell_size = 2u << 20;
    /// Called as cells finish with (bytes of guest range done, total bytes).
    std::function<void(std::uint64_t, std::uint64_t)> progress;
    /// qemu-img convert --salvage: a source read that fails is read again
    /// sector by sector; sectors that still fail become zeros and `warn`
    /// gets QEMU's line for each ("error while reading offset N: ...").
    bool salvage = false;
    std::function<void(const std::string&)> warn;
    /// Set by run_copy: the image of the first operation that failed.
    mutable copy_side failed = copy_side::none;
};

/// Carry out `segments` (sorted, non-overlapping, 512-byte aligned).
std::error_code run_copy(driver& d, const copy_plan& plan, const std::vector<segment>& segments);

/// One error line for a failed run_copy: the file that failed (named by
/// the caller for each side), whether reading or writing, and the cause.
std::string copy_failure(const copy_plan& plan, std::error_code ec, const std::string& source_name,
                         const std::string& reference_name, const std::string& target_name);

/// Cells and depth suited to a target with `cluster_size` clusters (0: raw):
/// cells of whole clusters, at most about 256 MiB of buffers in flight.
void size_cells(copy_plan& plan, std::uint64_t cluster_size, unsigned max_depth);

/// Terminal progress as qemu-img prints it: "    (12.00/100%)\r".
class progress_meter {
public:
    explicit progress_meter(bool enabled) : enabled_(enabled) {}
    void update(double percent);
    void finish();

private:
    bool enabled_;
    double shown_ = -1;
};

}  // namespace qed::tools::img
