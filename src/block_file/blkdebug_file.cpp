// SPDX-License-Identifier: BSL-1.0
// QEMU's blkdebug: rules that fail requests (qed/blkdebug.hpp), and an
// alignment imposed on the file below (misaligned requests are widened to
// it: reads through a bounce buffer, writes read-modify-write).
#include <algorithm>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <list>

#include "block_file/posix_io.hpp"
#include "qed/blkdebug.hpp"
#include "qed/error.hpp"

namespace qed {

namespace {

namespace asio = boost::asio;

constexpr const char* event_names[] = {
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l2_load",
    "l2_update",
    "l2_update_compressed",
    "l2_alloc_cow_read",
    "l2_alloc_write",
    "read_aio",
    "read_backing_aio",
    "read_compressed",
    "write_aio",
    "write_compressed",
    "vmstate_load",
    "vmstate_save",
    "cow_read",
    "cow_write",
    "reftable_load",
    "reftable_grow",
    "reftable_update",
    "refblock_load",
    "refblock_update",
    "refblock_update_part",
    "refblock_alloc",
    "refblock_alloc_hookup",
    "refblock_alloc_write",
    "refblock_alloc_write_blocks",
    "refblock_alloc_write_table",
    "refblock_alloc_switch_table",
    "cluster_alloc",
    "cluster_alloc_bytes",
    "cluster_free",
    "flush_to_os",
    "flush_to_disk",
    "pwritev_rmw_head",
    "pwritev_rmw_after_head",
    "pwritev_rmw_tail",
    "pwritev_rmw_after_tail",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "empty_image_prepare",
    "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters",
    "cor_write",
    "cluster_alloc_space",
    "none",
};
static_assert(std::size(event_names) == static_cast<std::size_t>(blkdbg_event::none) + 1);

constexpr const char* iotype_names[] = {"read", "write", "write-zeroes", "discard", "flush", "block-status"};

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

bool parse_number(std::string_view v, std::int64_t& out) {
    const std::string s(v);
    if (s.empty()) return false;
    errno = 0;
    char* end = nullptr;
    const long long n = std::strtoll(s.c_str(), &end, 0);
    if (errno != 0 || end != s.c_str() + s.size()) return false;
    out = n;
    return true;
}

bool parse_bool(std::string_view v, bool& out) {
    if (v == "on" || v == "yes" || v == "true")
        out = true;
    else if (v == "off" || v == "no" || v == "false")
        out = false;
    else
        return false;
    return true;
}

/// A section being read: its rule, where it started, and whether it named its event.
struct section {
    blkdebug_rule rule;
    bool has_event = false;
    unsigned line = 0;
};

// ---- the layer --------------------------------------------------------------

struct aligned_free {
    void operator()(std::byte* p) const noexcept { std::free(p); }
};
using bounce_buffer = std::unique_ptr<std::byte, aligned_free>;

bounce_buffer make_bounce(std::size_t n, std::size_t align) {
    const std::size_t a = std::max<std::size_t>(align, alignof(std::max_align_t));
    const std::size_t size = (n + a - 1) / a * a;
    auto* p = static_cast<std::byte*>(std::aligned_alloc(a, size ? size : a));
    if (!p) throw std::bad_alloc();
    return bounce_buffer(p);
}

template <class Buffers>
std::size_t total_of(const Buffers& buffers) {
    std::size_t n = 0;
    for (const auto& b : buffers) n += b.size();
    return n;
}

class blkdebug_file final : public block_file, public std::enable_shared_from_this<blkdebug_file> {
public:
    blkdebug_file(std::shared_ptr<block_file> inner, std::vector<blkdebug_rule> rules, std::uint64_t align)
        : inner_(std::move(inner)), align_(align) {
        for (auto& r : rules) rules_.push_back(std::make_shared<live_rule>(live_rule{std::move(r), false}));
        debug_event(blkdbg_event::none);  // QEMU activates the `none` rules at open
    }

    executor_type get_executor() const override { return inner_->get_executor(); }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        const std::size_t total = total_of(buffers);
        // (Named, not a structured binding: clang 14, which builds the
        // fuzzers, can't capture those in lambdas.)
        const auto range = widen(offset, total);
        const std::uint64_t a0 = range.first, a1 = range.second;
        if (const int e = check(a0, a1 - a0, blkdebug_io::read)) return fail(std::move(handler), e);
        if (a0 == offset && a1 == offset + total) return inner_->async_read_at(offset, buffers, std::move(handler));
        // Misaligned: read the aligned range and copy the middle out.
        auto bounce = std::make_shared<bounce_buffer>(make_bounce(static_cast<std::size_t>(a1 - a0), io_align()));
        std::vector<asio::mutable_buffer> out(buffers.begin(), buffers.end());
        asio::mutable_buffer whole(bounce->get(), static_cast<std::size_t>(a1 - a0));
        inner_->async_read_at(a0, {&whole, 1},
                              [bounce, out = std::move(out), skip = offset - a0, total, h = std::move(handler)](
                                  boost::system::error_code ec, std::size_t) mutable {
                                  if (!ec) {
                                      std::size_t at = static_cast<std::size_t>(skip);
                                      for (const auto& b : out) {
                                          std::memcpy(b.data(), bounce->get() + at, b.size());
                                          at += b.size();
                                      }
                                  }
                                  std::move(h)(ec, ec ? 0 : total);
                              });
    }

    void async_write_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                        io_handler handler) override {
        const std::size_t total = total_of(buffers);
        // (Named, not a structured binding: clang 14, which builds the
        // fuzzers, can't capture those in lambdas.)
        const auto range = widen(offset, total);
        const std::uint64_t a0 = range.first, a1 = range.second;
        if (const int e = check(a0, a1 - a0, blkdebug_io::write)) return fail(std::move(handler), e);
        ++write_gen_;
        ++writes_in_flight_;
        // (A new handler, not assigned to `handler`: Asio 1.81's move
        // assignment of any_completion_handler recurses without end.)
        io_handler counted([this, self = shared_from_this(), h = std::move(handler)](boost::system::error_code ec,
                                                                                     std::size_t n) mutable {
            --writes_in_flight_;
            std::move(h)(ec, n);
        });
        if (!align_) return inner_->async_write_at(offset, buffers, std::move(counted));
        // With an alignment, writes whose widened ranges overlap run one at a
        // time, so a read-modify-write can't put back bytes another write
        // changed in the meantime.
        std::vector<asio::const_buffer> in(buffers.begin(), buffers.end());
        auto self = shared_from_this();
        lock(a0, a1, [this, self, offset, total, a0, a1, in = std::move(in), h = std::move(counted)]() mutable {
            auto unlock_then = [this, self, a0, a1, h = std::move(h)](boost::system::error_code ec,
                                                                      std::size_t n) mutable {
                unlock(a0, a1);
                std::move(h)(ec, n);
            };
            if (a0 == offset && a1 == offset + total)
                return inner_->async_write_at(offset, in, io_handler(std::move(unlock_then)));
            read_modify_write(offset, total, a0, a1, std::move(in), io_handler(std::move(unlock_then)));
        });
    }

    void async_flush(op_handler handler) override {
        // As QEMU's block layer: nothing written since the last flush, nothing
        // to do (no events, no rules).
        if (write_gen_ == flushed_gen_) {
            return asio::post(get_executor(), [h = std::move(handler)]() mutable { std::move(h)(std::error_code{}); });
        }
        // A write still in flight is not covered: the next flush goes down.
        const std::uint64_t gen = writes_in_flight_ ? flushed_gen_ : write_gen_;
        // What QEMU's flush of the format above announces to this node.
        debug_event(blkdbg_event::flush_to_os);
        debug_event(blkdbg_event::flush_to_disk);
        if (const int e = check(0, 0, blkdebug_io::flush)) {
            return asio::post(get_executor(),
                              [h = std::move(handler), e]() mutable { std::move(h)(detail::errno_code(e)); });
        }
        auto self = shared_from_this();
        inner_->async_flush([this, self, gen, h = std::move(handler)](boost::system::error_code ec) mutable {
            if (!ec) flushed_gen_ = std::max(flushed_gen_, gen);
            std::move(h)(ec);
        });
    }

    void async_resize(std::uint64_t size, op_handler handler) override {
        ++write_gen_;
        inner_->async_resize(size, std::move(handler));
    }

    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        if (const int e = check(offset, length, blkdebug_io::discard)) {
            return asio::post(get_executor(),
                              [h = std::move(handler), e]() mutable { std::move(h)(detail::errno_code(e)); });
        }
        ++write_gen_;
        inner_->async_punch_hole(offset, length, std::move(handler));
    }

    std::uint64_t size(std::error_code& ec) const override { return inner_->size(ec); }
    std::size_t alignment() const noexcept override { return io_align(); }
    std::error_code allocation(std::uint64_t offset, std::uint64_t length, bool& data,
                               std::uint64_t& run) const override {
        if (const int e = check(offset, length, blkdebug_io::block_status)) return detail::errno_code(e);
        return inner_->allocation(offset, length, data, run);
    }
    // QEMU's blkdebug answers block status by its rules (on the range
    // widened to its alignment), then by the node below.
    void async_block_status(std::uint64_t offset, std::uint64_t length, file_status_handler handler) override {
        const auto range = widen(offset, static_cast<std::size_t>(length));
        const std::uint64_t a0 = range.first, a1 = range.second;
        if (const int e = check(a0, a1 - a0, blkdebug_io::block_status)) {
            return asio::post(get_executor(), [h = std::move(handler), e]() mutable {
                std::move(h)(detail::errno_code(e), std::vector<file_extent>{});
            });
        }
        inner_->async_block_status(offset, length, std::move(handler));
    }
    bool fixed_size() const noexcept override { return inner_->fixed_size(); }
    file_identity identity() const noexcept override { return inner_->identity(); }
    bool read_only() const noexcept override { return inner_->read_only(); }
    const char* backend_name() const noexcept override { return "blkdebug"; }

    void debug_event(blkdbg_event event) noexcept override {
        std::int64_t new_state = state_;
        bool set = false;
        bool injected = false;
        for (const auto& r : rules_) {
            if (r->removed || r->rule.event != event) continue;
            if (r->rule.state != 0 && r->rule.state != state_) continue;
            if (r->rule.action == blkdebug_rule::kind::inject_error) {
                if (!injected) active_.clear();
                injected = true;
                active_.push_back(r);
            } else if (!set) {  // the first set-state rule for the event wins, as in QEMU
                new_state = r->rule.new_state;
                set = true;
            }
        }
        state_ = new_state;
    }

private:
    struct live_rule {
        blkdebug_rule rule;
        bool removed;
    };
    struct waiter {
        std::uint64_t a0, a1;
        asio::any_completion_handler<void()> start;
    };

    std::size_t io_align() const noexcept {
        return std::max<std::size_t>(static_cast<std::size_t>(align_), inner_->alignment());
    }

    std::pair<std::uint64_t, std::uint64_t> widen(std::uint64_t offset, std::size_t len) const {
        if (!align_) return {offset, offset + len};
        return {offset / align_ * align_, (offset + len + align_ - 1) / align_ * align_};
    }

    /// The errno the first matching active rule fails [offset, offset+len)
    /// with, or 0.
    int check(std::uint64_t offset, std::uint64_t len, blkdebug_io type) const {
        for (auto it = active_.begin(); it != active_.end(); ++it) {
            const blkdebug_rule& r = (*it)->rule;
            const bool where = r.sector < 0 || (len != 0 && static_cast<std::uint64_t>(r.sector) * 512 >= offset &&
                                                static_cast<std::uint64_t>(r.sector) * 512 < offset + len);
            if (!where || !(r.iotypes & (1u << static_cast<unsigned>(type)))) continue;
            const int e = r.error;
            if (e == 0) return 0;
            if (r.once) {
                (*it)->removed = true;
                active_.erase(it);
            }
            return e;
        }
        return 0;
    }

    void fail(io_handler h, int e) {
        asio::post(get_executor(), [h = std::move(h), e]() mutable { std::move(h)(detail::errno_code(e), 0); });
    }

    // Head and tail blocks come from the file below (checked as reads, as
    // QEMU's block layer reads them through this node), then the widened
    // range is written in one piece.
    void read_modify_write(std::uint64_t offset, std::size_t total, std::uint64_t a0, std::uint64_t a1,
                           std::vector<asio::const_buffer> in, io_handler handler) {
        const std::size_t len = static_cast<std::size_t>(a1 - a0);
        auto bounce = std::make_shared<bounce_buffer>(make_bounce(len, io_align()));
        const bool head = offset != a0;
        const bool tail = offset + total != a1 && (!head || a1 - a0 > align_);
        auto self = shared_from_this();
        auto finish = [this, self, bounce, in = std::move(in), offset, total, a0, len,
                       h = std::move(handler)](boost::system::error_code ec) mutable {
            if (ec) return std::move(h)(ec, 0);
            std::size_t at = static_cast<std::size_t>(offset - a0);
            for (const auto& b : in) {
                std::memcpy(bounce->get() + at, b.data(), b.size());
                at += b.size();
            }
            asio::const_buffer whole(bounce->get(), len);
            inner_->async_write_at(
                a0, {&whole, 1}, [bounce, total, h = std::move(h)](boost::system::error_code wec, std::size_t) mutable {
                    std::move(h)(wec, wec ? 0 : total);
                });
        };
        auto read_block = [this, self, bounce, a0](std::uint64_t at, auto next) {
            if (const int e = check(at, align_, blkdebug_io::read)) {
                return asio::post(get_executor(), [next = std::move(next), e]() mutable {
                    next(boost::system::error_code(detail::errno_code(e)));
                });
            }
            asio::mutable_buffer b(bounce->get() + (at - a0), static_cast<std::size_t>(align_));
            inner_->async_read_at(
                at, {&b, 1},
                [bounce, next = std::move(next)](boost::system::error_code ec, std::size_t) mutable { next(ec); });
        };
        const std::uint64_t last = a1 - align_;
        if (head && tail) {
            read_block(a0, [read_block, last, finish = std::move(finish)](boost::system::error_code ec) mutable {
                if (ec) return finish(ec);
                read_block(last, std::move(finish));
            });
        } else {
            read_block(head ? a0 : last, std::move(finish));
        }
    }

    static bool overlaps(std::uint64_t a0, std::uint64_t a1, std::uint64_t b0, std::uint64_t b1) {
        return a0 < b1 && b0 < a1;
    }

    /// Whether [a0, a1) overlaps a held range or a waiter queued before `until`.
    bool conflicts(std::uint64_t a0, std::uint64_t a1, std::list<waiter>::const_iterator until) const {
        for (const auto& [h0, h1] : held_)
            if (overlaps(a0, a1, h0, h1)) return true;
        for (auto it = waiting_.cbegin(); it != until; ++it)
            if (overlaps(a0, a1, it->a0, it->a1)) return true;
        return false;
    }

    void lock(std::uint64_t a0, std::uint64_t a1, asio::any_completion_handler<void()> start) {
        if (conflicts(a0, a1, waiting_.cend())) {
            waiting_.push_back({a0, a1, std::move(start)});
            return;
        }
        held_.emplace_back(a0, a1);
        std::move(start)();
    }

    void unlock(std::uint64_t a0, std::uint64_t a1) {
        held_.erase(std::find(held_.begin(), held_.end(), std::make_pair(a0, a1)));
        std::vector<asio::any_completion_handler<void()>> ready;
        // (A list: erasing never move-assigns the handlers, which Asio 1.81
        // can't do.)
        for (auto it = waiting_.begin(); it != waiting_.end();) {
            if (conflicts(it->a0, it->a1, it)) {
                ++it;
                continue;
            }
            held_.emplace_back(it->a0, it->a1);
            ready.push_back(std::move(it->start));
            it = waiting_.erase(it);
        }
        for (auto& s : ready) std::move(s)();
    }

    std::shared_ptr<block_file> inner_;
    std::uint64_t align_;
    std::vector<std::shared_ptr<live_rule>> rules_;
    mutable std::vector<std::shared_ptr<live_rule>> active_;
    std::int64_t state_ = 1;
    std::uint64_t write_gen_ = 0;    // writes started
    std::uint64_t flushed_gen_ = 0;  // writes a completed flush covered
    unsigned writes_in_flight_ = 0;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> held_;
    std::list<waiter> waiting_;
};

}  // namespace

const char* blkdbg_event_name(blkdbg_event e) noexcept {
    const auto i = static_cast<std::size_t>(e);
    return i < std::size(event_names) ? event_names[i] : "?";
}

std::optional<blkdbg_event> blkdbg_event_from_name(std::string_view name) noexcept {
    for (std::size_t i = 0; i < std::size(event_names); ++i)
        if (name == event_names[i]) return static_cast<blkdbg_event>(i);
    return std::nullopt;
}

bool is_blkdebug_name(std::string_view name) noexcept {
    return name.starts_with("blkdebug:");
}

std::error_code parse_blkdebug_name(std::string_view name, blkdebug_config& out, std::string& error) {
    if (!is_blkdebug_name(name)) {
        error = std::string(name) + ": not a blkdebug name (blkdebug:RULES_FILE:IMAGE or blkdebug::IMAGE)";
        return errc::invalid_argument;
    }
    std::string_view rest = name.substr(9);
    const auto colon = rest.find(':');
    if (colon == std::string_view::npos) {
        error = std::string(name) + ": blkdebug requires both config file and image path";
        return errc::invalid_argument;
    }
    out.config_file = std::string(rest.substr(0, colon));
    out.image = std::string(rest.substr(colon + 1));
    if (out.image.empty()) {
        error = std::string(name) + ": blkdebug requires both config file and image path";
        return errc::invalid_argument;
    }
    return {};
}

bool set_blkdebug_rule_option(blkdebug_rule& r, std::string_view key, std::string_view value, std::string& why) {
    const bool inject = r.action == blkdebug_rule::kind::inject_error;
    const std::string k(key);
    auto number = [&](std::int64_t& dst) {
        if (parse_number(value, dst)) return true;
        why = "'" + k + "' expects a number, not '" + std::string(value) + "'";
        return false;
    };
    auto boolean = [&](bool& dst) {
        if (parse_bool(value, dst)) return true;
        why = "'" + k + "' expects on or off, not '" + std::string(value) + "'";
        return false;
    };
    if (key == "event") {
        const auto e = blkdbg_event_from_name(value);
        if (!e) {
            why = "unknown event '" + std::string(value) + "'";
            return false;
        }
        r.event = *e;
        return true;
    }
    if (key == "state") return number(r.state);
    if (inject && key == "errno") {
        std::int64_t e = 0;
        if (!number(e)) return false;
        if (e < 0 || e > INT_MAX) {
            why = "errno out of range: " + std::string(value);
            return false;
        }
        r.error = static_cast<int>(e);
        return true;
    }
    if (inject && key == "sector") {
        if (!number(r.sector)) return false;
        if (r.sector < -1) {
            why = "sector out of range: " + std::string(value);
            return false;
        }
        return true;
    }
    if (inject && key == "once") return boolean(r.once);
    if (inject && key == "immediately") return boolean(r.immediately);
    if (inject && key == "iotype") {
        std::size_t i = 0;
        while (i < std::size(iotype_names) && value != iotype_names[i]) ++i;
        if (i == std::size(iotype_names)) {
            why = "unknown iotype '" + std::string(value) + "'";
            return false;
        }
        r.iotypes = 1u << i;
        return true;
    }
    if (!inject && key == "new_state") return number(r.new_state);
    why = "Invalid parameter '" + k + "' in [" + (inject ? "inject-error" : "set-state") + "]";
    return false;
}

std::error_code read_blkdebug_rules(const std::string& file, std::vector<blkdebug_rule>& out, std::string& error) {
    std::ifstream in(file);
    if (!in) {
        const int e = errno ? errno : ENOENT;
        error = file + ": Could not read blkdebug config file: " + std::strerror(e);
        return detail::errno_code(e);
    }
    std::vector<blkdebug_rule> rules;
    std::optional<section> cur;
    auto bad = [&](unsigned line, const std::string& why) {
        error = file + ":" + std::to_string(line) + ": " + why;
        return std::error_code(errc::invalid_argument);
    };
    auto close = [&]() -> std::error_code {
        if (!cur) return {};
        if (!cur->has_event) return bad(cur->line, "Missing event name for rule");
        rules.push_back(cur->rule);
        cur.reset();
        return {};
    };
    std::string text;
    unsigned lineno = 0;
    while (std::getline(in, text)) {
        ++lineno;
        std::string_view line = trim(text);
        if (line.empty() || line.front() == '#') continue;
        if (line.front() == '[') {
            if (line.back() != ']') return bad(lineno, "parse error: '" + std::string(line) + "'");
            if (auto ec = close()) return ec;
            const std::string_view group = trim(line.substr(1, line.size() - 2));
            section s;
            s.line = lineno;
            if (group == "inject-error")
                s.rule.action = blkdebug_rule::kind::inject_error;
            else if (group == "set-state")
                s.rule.action = blkdebug_rule::kind::set_state;
            else
                return bad(lineno, "unknown section [" + std::string(group) +
                                       "] (blkdebug takes [inject-error] and [set-state])");
            cur = s;
            continue;
        }
        const auto eq = line.find('=');
        if (eq == std::string_view::npos) return bad(lineno, "parse error: '" + std::string(line) + "'");
        if (!cur) return bad(lineno, "no group defined");
        const std::string key(trim(line.substr(0, eq)));
        std::string_view value = trim(line.substr(eq + 1));
        if (value.size() < 2 || value.front() != '"' || value.back() != '"')
            return bad(lineno, "parse error: the value of '" + key + "' must be in double quotes");
        value = value.substr(1, value.size() - 2);
        std::string why;
        if (!set_blkdebug_rule_option(cur->rule, key, value, why)) return bad(lineno, why);
        if (key == "event") cur->has_event = true;
    }
    if (in.bad()) {
        error = file + ": Could not read blkdebug config file: " + std::strerror(EIO);
        return detail::errno_code(EIO);
    }
    if (auto ec = close()) return ec;
    out.insert(out.end(), rules.begin(), rules.end());
    return {};
}

std::shared_ptr<block_file> make_blkdebug_file(std::shared_ptr<block_file> inner, std::vector<blkdebug_rule> rules,
                                               std::uint64_t align, std::error_code& ec) {
    ec.clear();
    if (align != 0 && (align >= INT_MAX || (align & (align - 1)) != 0)) {
        ec = errc::invalid_argument;
        return nullptr;
    }
    return std::make_shared<blkdebug_file>(std::move(inner), std::move(rules), align);
}

std::shared_ptr<block_file> open_blkdebug_file(const boost::asio::any_io_executor& ex, const blkdebug_config& config,
                                               const file_options& options, std::error_code& ec) {
    auto log = [&](const std::string& line) {
        if (options.log) options.log(line);
    };
    std::vector<blkdebug_rule> rules;
    std::string error;
    if (!config.config_file.empty()) {
        if ((ec = read_blkdebug_rules(config.config_file, rules, error))) {
            log(error);
            return nullptr;
        }
    }
    rules.insert(rules.end(), config.rules.begin(), config.rules.end());
    if (config.align != 0 && (config.align >= INT_MAX || (config.align & (config.align - 1)) != 0)) {
        log("Cannot meet constraints with align " + std::to_string(config.align));
        ec = errc::invalid_argument;
        return nullptr;
    }
    auto inner = open_file(ex, config.image, options, ec);
    if (!inner) return nullptr;
    return make_blkdebug_file(std::move(inner), std::move(rules), config.align, ec);
}

}  // namespace qed
