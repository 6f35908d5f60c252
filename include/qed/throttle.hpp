// SPDX-License-Identifier: BSL-1.0
// QEMU's I/O throttling: throttle groups (QEMU's `throttle-group` objects)
// and the throttle filter (QEMU's `driver=throttle` node), a block file that
// delays the requests going through it so that every filter of a group,
// together, keeps to the group's limits.
//
// What is implemented is QEMU's leaky-bucket scheme (util/throttle.c): six
// buckets (bytes and requests; total, read, write), each with an average
// rate `avg` and optionally a burst rate `max` that may be kept up for
// `burst_length` seconds. A request is let through when none of the buckets
// it counts in is over its size: avg / 10 units without a burst rate
// (short bursts stay cheap), max * burst_length units with one, and with
// a burst length above one second also when its burst level is at most
// max / 10. Once through, it adds its bytes to the byte buckets and one
// unit (size / iops_size units when larger than iops_size) to the request
// buckets of its direction and of the total; the buckets leak `avg` units
// per second (burst levels `max`). A request that has to wait sleeps on an
// Asio steady timer for exactly the time its fullest bucket needs to leak
// down to size. Reads count as reads; writes, write-zeroes and hole
// punches as writes; flushes and resizes are not throttled. Within a group
// the members take turns (QEMU's round robin): one timer per direction is
// armed at a time, for the member whose turn it is, and each member's
// requests keep their order.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "qed/block_file.hpp"

namespace qed {

/// QEMU's six buckets (BucketType), the index into throttle_config::buckets.
enum class throttle_bucket : unsigned {
    bps_total,   ///< bytes, reads and writes
    bps_read,    ///< bytes read
    bps_write,   ///< bytes written
    iops_total,  ///< requests, reads and writes
    iops_read,   ///< read requests
    iops_write,  ///< write requests
};

/// The limits of one bucket.
struct throttle_bucket_limits {
    std::uint64_t avg = 0;           ///< units (bytes or requests) per second; 0: no limit
    std::uint64_t max = 0;           ///< burst rate (QEMU's ...-max); 0: none
    std::uint64_t burst_length = 1;  ///< seconds a burst at `max` may last (...-max-length)
};

/// A throttle group's limits (QEMU's ThrottleConfig).
struct throttle_config {
    /// By throttle_bucket.
    std::array<throttle_bucket_limits, 6> buckets{};
    /// When set, a request of more bytes counts as size / iops_size requests.
    std::uint64_t iops_size = 0;

    /// Set one limit by QEMU's name for it, without the "x-" of the
    /// object's properties or the "limits." of its struct: iops-total,
    /// iops-read, iops-write, bps-total, bps-read, bps-write, each also with
    /// -max and -max-length, and iops-size. False with `why` set (QEMU's
    /// words) for an unknown name or a value out of range.
    bool set(std::string_view name, std::uint64_t value, std::string& why);

    /// QEMU's throttle_is_valid: empty when the limits can be used together,
    /// else why not, in QEMU's words.
    std::string invalid() const;
};

/// A group of throttle filters sharing one set of limits: what all its
/// members let through together keeps to them. Thread-safe: members may run
/// on different executors (each one's requests and timers stay on its own).
class throttle_group {
public:
    /// A group named `name` (QEMU's object id) with `config`; null with
    /// `why` set when config.invalid() says it is not valid.
    static std::shared_ptr<throttle_group> create(std::string name, const throttle_config& config, std::string& why);

    ~throttle_group();
    throttle_group(const throttle_group&) = delete;
    throttle_group& operator=(const throttle_group&) = delete;

    /// The group's name (the id its throttle nodes name it by).
    const std::string& name() const noexcept;
    /// The group's limits.
    const throttle_config& config() const noexcept;

    /// \cond
    struct state;
    explicit throttle_group(std::unique_ptr<state> s);
    state& shared() noexcept { return *state_; }
    /// \endcond

private:
    std::unique_ptr<state> state_;
};

/// A throttle filter over `inner` (on its executor), a member of `group`
/// until it is destroyed. Never null.
std::shared_ptr<block_file> make_throttle_file(std::shared_ptr<block_file> inner,
                                               std::shared_ptr<throttle_group> group);

}  // namespace qed
