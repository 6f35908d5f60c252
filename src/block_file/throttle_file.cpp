// SPDX-License-Identifier: BSL-1.0
// QEMU's throttle groups and throttle filter (qed/throttle.hpp says what
// is implemented). The scheduling follows QEMU's throttle-groups.c: a
// request goes at once when no timer of its direction is armed in the group,
// its member has none of that direction waiting, and the buckets allow it;
// otherwise it waits in its member's queue. When one must wait, the timer of
// the member whose turn it is (round robin among the members with waiting
// requests) is armed for the time the buckets need; when it fires, that
// member's first waiting request goes, is accounted, and the next turn is
// scheduled the same way.
#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <climits>
#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

#include "qed/throttle.hpp"

namespace qed {
namespace {

namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;

constexpr std::uint64_t value_max = 1000000000000000ull;  // QEMU's THROTTLE_VALUE_MAX
constexpr double ns_per_s = 1e9;

class throttle_file;

/// A request waiting for its turn: what starts it once let through.
class job {
public:
    virtual ~job() = default;
    virtual void run() = 0;
};
template <class F>
class job_of final : public job {
public:
    explicit job_of(F f) : f_(std::move(f)) {}
    void run() override { f_(); }

private:
    F f_;
};
template <class F>
std::unique_ptr<job> make_job(F f) {
    return std::make_unique<job_of<F>>(std::move(f));
}

struct waiting {
    std::uint64_t bytes = 0;
    std::unique_ptr<job> start;
    /// The filter's executor, tracking work: a request waiting for its turn
    /// keeps its io_context running, also while the turn is another
    /// member's (whose timer may be on another thread).
    asio::any_io_executor work;
};

unsigned index(throttle_bucket b) {
    return static_cast<unsigned>(b);
}

}  // namespace

// ---- limits ------------------------------------------------------------------

bool throttle_config::set(std::string_view name, std::uint64_t value, std::string& why) {
    if (name == "iops-size") {
        iops_size = value;
        return true;
    }
    struct known {
        std::string_view prefix;
        throttle_bucket bucket;
    };
    static constexpr known names[] = {
        {"iops-total", throttle_bucket::iops_total}, {"iops-read", throttle_bucket::iops_read},
        {"iops-write", throttle_bucket::iops_write}, {"bps-total", throttle_bucket::bps_total},
        {"bps-read", throttle_bucket::bps_read},     {"bps-write", throttle_bucket::bps_write},
    };
    for (const auto& k : names) {
        if (name.substr(0, k.prefix.size()) != k.prefix) continue;
        const std::string_view rest = name.substr(k.prefix.size());
        throttle_bucket_limits& b = buckets[index(k.bucket)];
        if (rest.empty()) {
            b.avg = value;
        } else if (rest == "-max") {
            b.max = value;
        } else if (rest == "-max-length") {
            if (value > UINT_MAX) {
                why = std::string(name) + " value must be in the range [0, " + std::to_string(UINT_MAX) + "]";
                return false;
            }
            b.burst_length = value;
        } else {
            break;
        }
        return true;
    }
    why = "unknown throttle limit '" + std::string(name) + "'";
    return false;
}

std::string throttle_config::invalid() const {
    auto b = [this](throttle_bucket k) -> const throttle_bucket_limits& { return buckets[index(k)]; };
    using k = throttle_bucket;
    const bool bps = b(k::bps_total).avg && (b(k::bps_read).avg || b(k::bps_write).avg);
    const bool ops = b(k::iops_total).avg && (b(k::iops_read).avg || b(k::iops_write).avg);
    const bool bps_max = b(k::bps_total).max && (b(k::bps_read).max || b(k::bps_write).max);
    const bool ops_max = b(k::iops_total).max && (b(k::iops_read).max || b(k::iops_write).max);
    if (bps || ops || bps_max || ops_max)
        return "bps/iops/max total values and read/write values cannot be used at the same time";
    if (iops_size && !b(k::iops_total).avg && !b(k::iops_read).avg && !b(k::iops_write).avg)
        return "iops size requires an iops value to be set";
    for (const auto& bkt : buckets) {
        if (bkt.avg > value_max || bkt.max > value_max)
            return "bps/iops/max values must be within [0, " + std::to_string(value_max) + "]";
        if (!bkt.burst_length) return "the burst length cannot be 0";
        if (bkt.burst_length > 1 && !bkt.max) return "burst length set without burst rate";
        if (bkt.max && bkt.burst_length > value_max / bkt.max) return "burst length too high for this burst rate";
        if (bkt.max && !bkt.avg) return "bps_max/iops_max require corresponding bps/iops values";
        if (bkt.max && bkt.max < bkt.avg) return "bps_max/iops_max cannot be lower than bps/iops";
    }
    return {};
}

// ---- the group -----------------------------------------------------------------

/// What the members of a group share, under `mutex`: the buckets, the
/// members in their round-robin order, whose turn it is and whether a timer
/// is armed, per direction (0 read, 1 write); and each member's waiting
/// requests (kept in the member, guarded by this mutex too).
struct throttle_group::state {
    std::string name;
    throttle_config config;
    std::mutex mutex;
    std::array<double, 6> level{};
    std::array<double, 6> burst_level{};
    clock_type::time_point previous_leak = clock_type::now();
    std::vector<throttle_file*> members;
    std::array<throttle_file*, 2> tokens{};
    std::array<bool, 2> timer_armed{};

    /// QEMU's throttle_do_leak: every bucket leaks for the time since the last leak.
    void leak(clock_type::time_point now) {
        const auto delta = std::chrono::duration_cast<std::chrono::nanoseconds>(now - previous_leak).count();
        previous_leak = now;
        if (delta <= 0) return;
        for (std::size_t i = 0; i < 6; ++i) {
            const auto& b = config.buckets[i];
            level[i] = std::max(level[i] - static_cast<double>(b.avg) * static_cast<double>(delta) / ns_per_s, 0.0);
            if (b.burst_length > 1)
                burst_level[i] =
                    std::max(burst_level[i] - static_cast<double>(b.max) * static_cast<double>(delta) / ns_per_s, 0.0);
        }
    }

    /// QEMU's throttle_compute_wait: nanoseconds until bucket `i` lets a request through.
    std::int64_t wait_for(std::size_t i) const {
        const auto& b = config.buckets[i];
        if (!b.avg) return 0;
        double bucket_size, burst_bucket_size;
        if (!b.max) {
            bucket_size = static_cast<double>(b.avg) / 10;
            burst_bucket_size = 0;
        } else {
            bucket_size = static_cast<double>(b.max) * static_cast<double>(b.burst_length);
            burst_bucket_size = static_cast<double>(b.max) / 10;
        }
        double extra = level[i] - bucket_size;
        if (extra > 0) return static_cast<std::int64_t>(extra * ns_per_s / static_cast<double>(b.avg));
        if (b.burst_length > 1) {
            extra = burst_level[i] - burst_bucket_size;
            if (extra > 0) return static_cast<std::int64_t>(extra * ns_per_s / static_cast<double>(b.max));
        }
        return 0;
    }

    /// The longest wait of the buckets a request of direction `dir` counts in.
    std::int64_t wait(unsigned dir) const {
        using k = throttle_bucket;
        const throttle_bucket own[2][2] = {{k::bps_read, k::iops_read}, {k::bps_write, k::iops_write}};
        std::int64_t w = std::max(wait_for(index(k::bps_total)), wait_for(index(k::iops_total)));
        for (const auto b : own[dir]) w = std::max(w, wait_for(index(b)));
        return w;
    }

    /// QEMU's throttle_account: a request let through fills its buckets.
    void account(unsigned dir, std::uint64_t bytes) {
        using k = throttle_bucket;
        double units = 1.0;
        if (config.iops_size && bytes > config.iops_size)
            units = static_cast<double>(bytes) / static_cast<double>(config.iops_size);
        const throttle_bucket size_buckets[2] = {k::bps_total, dir ? k::bps_write : k::bps_read};
        const throttle_bucket unit_buckets[2] = {k::iops_total, dir ? k::iops_write : k::iops_read};
        for (int j = 0; j < 2; ++j) {
            const unsigned s = index(size_buckets[j]), u = index(unit_buckets[j]);
            level[s] += static_cast<double>(bytes);
            if (config.buckets[s].burst_length > 1) burst_level[s] += static_cast<double>(bytes);
            level[u] += units;
            if (config.buckets[u].burst_length > 1) burst_level[u] += units;
        }
    }

    throttle_file* next_member(throttle_file* m) const {
        auto it = std::find(members.begin(), members.end(), m);
        if (it == members.end() || ++it == members.end()) return members.front();
        return *it;
    }
};

throttle_group::throttle_group(std::unique_ptr<state> s) : state_(std::move(s)) {}
throttle_group::~throttle_group() = default;

const std::string& throttle_group::name() const noexcept {
    return state_->name;
}
const throttle_config& throttle_group::config() const noexcept {
    return state_->config;
}

std::shared_ptr<throttle_group> throttle_group::create(std::string name, const throttle_config& config,
                                                       std::string& why) {
    why = config.invalid();
    if (!why.empty()) return nullptr;
    auto s = std::make_unique<state>();
    s->name = std::move(name);
    s->config = config;
    return std::make_shared<throttle_group>(std::move(s));
}

// ---- the filter ------------------------------------------------------------------

namespace {

class throttle_file final : public block_file, public std::enable_shared_from_this<throttle_file> {
public:
    throttle_file(std::shared_ptr<block_file> inner, std::shared_ptr<throttle_group> group)
        : inner_(std::move(inner)),
          group_(std::move(group)),
          timers_{asio::steady_timer(inner_->get_executor()), asio::steady_timer(inner_->get_executor())} {
        auto& g = group_->shared();
        std::lock_guard lock(g.mutex);
        g.members.push_back(this);
        for (auto& t : g.tokens)
            if (!t) t = this;
    }

    // QEMU's throttle_group_unregister_tgm. Nothing waits here any more
    // (waiting requests and armed timers hold the file).
    ~throttle_file() override {
        auto& g = group_->shared();
        std::lock_guard lock(g.mutex);
        for (auto& t : g.tokens) {
            if (t != this) continue;
            t = g.next_member(this);
            if (t == this) t = nullptr;
        }
        g.members.erase(std::remove(g.members.begin(), g.members.end(), this), g.members.end());
    }

    executor_type get_executor() const override { return inner_->get_executor(); }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        std::vector<asio::mutable_buffer> bufs(buffers.begin(), buffers.end());
        const std::uint64_t n = total(bufs);
        intercept(
            0, n,
            make_job([self = shared_from_this(), offset, bufs = std::move(bufs), h = std::move(handler)]() mutable {
                self->inner_->async_read_at(offset, bufs, std::move(h));
            }));
    }

    void async_write_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                        io_handler handler) override {
        std::vector<asio::const_buffer> bufs(buffers.begin(), buffers.end());
        const std::uint64_t n = total(bufs);
        intercept(
            1, n,
            make_job([self = shared_from_this(), offset, bufs = std::move(bufs), h = std::move(handler)]() mutable {
                self->inner_->async_write_at(offset, bufs, std::move(h));
            }));
    }

    void async_write_fua_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                            io_handler handler) override {
        std::vector<asio::const_buffer> bufs(buffers.begin(), buffers.end());
        const std::uint64_t n = total(bufs);
        intercept(
            1, n,
            make_job([self = shared_from_this(), offset, bufs = std::move(bufs), h = std::move(handler)]() mutable {
                self->inner_->async_write_fua_at(offset, bufs, std::move(h));
            }));
    }

    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        intercept(1, length, make_job([self = shared_from_this(), offset, length, h = std::move(handler)]() mutable {
                      self->inner_->async_punch_hole(offset, length, std::move(h));
                  }));
    }

    void async_flush(op_handler handler) override { inner_->async_flush(std::move(handler)); }
    void async_resize(std::uint64_t size, op_handler handler) override {
        inner_->async_resize(size, std::move(handler));
    }
    void async_close(op_handler handler) override { inner_->async_close(std::move(handler)); }

    std::uint64_t size(std::error_code& ec) const override { return inner_->size(ec); }
    std::size_t alignment() const noexcept override { return inner_->alignment(); }
    std::error_code allocation(std::uint64_t offset, std::uint64_t length, bool& data,
                               std::uint64_t& run) const override {
        return inner_->allocation(offset, length, data, run);
    }
    bool fixed_size() const noexcept override { return inner_->fixed_size(); }
    file_identity identity() const noexcept override { return inner_->identity(); }
    bool read_only() const noexcept override { return inner_->read_only(); }
    const char* backend_name() const noexcept override { return "throttle"; }
    void debug_event(blkdbg_event event) noexcept override { inner_->debug_event(event); }

private:
    using state = throttle_group::state;

    template <class Buffers>
    static std::uint64_t total(const Buffers& b) {
        std::uint64_t n = 0;
        for (const auto& x : b) n += x.size();
        return n;
    }

    /// QEMU's throttle_group_co_io_limits_intercept.
    void intercept(unsigned dir, std::uint64_t bytes, std::unique_ptr<job> start) {
        auto& g = group_->shared();
        std::unique_lock lock(g.mutex);
        throttle_file* token = next_token(g, this, dir);
        const bool must_wait = schedule_timer(g, token, dir);
        if (must_wait || pending_[dir]) {
            ++pending_[dir];
            queue_[dir].push_back(waiting{bytes, std::move(start),
                                          asio::prefer(get_executor(), asio::execution::outstanding_work.tracked)});
            return;
        }
        g.account(dir, bytes);
        schedule_next(g, this, dir);
        lock.unlock();
        start->run();
    }

    /// QEMU's next_throttle_token: the next member after the current token
    /// with requests of `dir` waiting, or `m` when there is none.
    static throttle_file* next_token(state& g, throttle_file* m, unsigned dir) {
        throttle_file* start = g.tokens[dir] ? g.tokens[dir] : m;
        throttle_file* token = g.next_member(start);
        while (token != start && !token->pending_[dir]) token = g.next_member(token);
        if (token == start && !token->pending_[dir]) token = m;
        return token;
    }

    /// QEMU's throttle_group_schedule_timer: whether a request of `dir` must
    /// wait; if it must and no timer is armed yet, arm `m`'s.
    static bool schedule_timer(state& g, throttle_file* m, unsigned dir) {
        if (g.timer_armed[dir]) return true;
        const auto now = clock_type::now();
        g.leak(now);
        const std::int64_t wait = g.wait(dir);
        if (wait <= 0) return false;
        if (!arm(m, dir, now + std::chrono::nanoseconds(wait))) return false;
        g.tokens[dir] = m;
        g.timer_armed[dir] = true;
        return true;
    }

    /// QEMU's schedule_next_request: give the next turn, at once when the
    /// buckets allow it (to `m`'s own waiting requests first), else by a timer.
    static void schedule_next(state& g, throttle_file* m, unsigned dir) {
        throttle_file* token = next_token(g, m, dir);
        if (!token->pending_[dir]) return;
        if (schedule_timer(g, token, dir)) return;
        if (!m->queue_[dir].empty()) {
            m->restart_soon(dir);
            token = m;
        } else if (arm(token, dir, clock_type::now())) {
            g.timer_armed[dir] = true;
        }
        g.tokens[dir] = token;
    }

    /// Arm `m`'s timer of `dir` (on its executor); the group's lock is held.
    /// False when `m` is going away (it then has nothing waiting).
    static bool arm(throttle_file* m, unsigned dir, clock_type::time_point when) {
        auto self = m->weak_from_this().lock();
        if (!self) return false;
        asio::post(self->get_executor(), [self, dir, when] {
            auto& t = self->timers_[dir];
            t.expires_at(when);
            t.async_wait([self, dir](boost::system::error_code ec) {
                if (ec == asio::error::operation_aborted) return;
                self->timer_fired(dir);
            });
        });
        return true;
    }

    /// The first waiting request of `dir` goes next, without a timer (one
    /// restart pending at a time); the group's lock is held.
    void restart_soon(unsigned dir) {
        if (restart_posted_[dir]) return;
        auto self = weak_from_this().lock();
        if (!self) return;
        restart_posted_[dir] = true;
        asio::post(get_executor(), [self, dir] { self->restart_queue(dir, true); });
    }

    /// QEMU's timer_cb.
    void timer_fired(unsigned dir) {
        {
            auto& g = group_->shared();
            std::lock_guard lock(g.mutex);
            g.timer_armed[dir] = false;
        }
        restart_queue(dir, false);
    }

    /// Let the first waiting request of `dir` go (or, with none, give the
    /// next turn to another member).
    void restart_queue(unsigned dir, bool posted) {
        auto& g = group_->shared();
        std::unique_lock lock(g.mutex);
        if (posted) restart_posted_[dir] = false;
        if (queue_[dir].empty()) {
            schedule_next(g, this, dir);
            return;
        }
        waiting w = std::move(queue_[dir].front());
        queue_[dir].pop_front();
        --pending_[dir];
        g.account(dir, w.bytes);
        schedule_next(g, this, dir);
        lock.unlock();
        w.start->run();
    }

    std::shared_ptr<block_file> inner_;
    std::shared_ptr<throttle_group> group_;
    std::array<asio::steady_timer, 2> timers_;  // on our executor only
    // Guarded by the group's mutex:
    std::array<std::size_t, 2> pending_{};
    std::array<std::deque<waiting>, 2> queue_;
    std::array<bool, 2> restart_posted_{};
};

}  // namespace

std::shared_ptr<block_file> make_throttle_file(std::shared_ptr<block_file> inner,
                                               std::shared_ptr<throttle_group> group) {
    return std::make_shared<throttle_file>(std::move(inner), std::move(group));
}

}  // namespace qed
