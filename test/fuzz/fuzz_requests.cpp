// SPDX-License-Identifier: BSL-1.0
// Fuzz harness (b): the input bytes are a program of requests on a fresh
// QED image in memory, checked against a reference model after every batch.
//
// Input format (read front to back; missing bytes read as 0):
//   config  u8   bit0 cluster 64K (else 4K); bits1-2 table_size 1/4/16/8;
//                bit3 raw backing file; bit4 backing format given (raw) or
//                probed; bit5 need-check timer 0 ms (else 1 h); bit6 plain
//                memory file (else a chaos file runs the I/Os in flight in a
//                seeded random order); bit7 create size not a multiple of 512
//           u8   bits0-2 L2 cache size - 1; bits3-4 image size in L2 spans
//                (0-2); bits5-6 backing size in L2 spans (0-2); bit7 backing
//                size not a multiple of 512
//           u16  image size: sectors to add
//           u16  backing size: sectors to add
//           u32  chaos seed
//   then operations, each a kind byte (value % 16) and arguments:
//     0-4 write  5-7 read  8-9 write-zeroes      + zone u8, delta u16, len u8,
//                                                  flags u8, extra u8
//     10 flush   11 grow (+ delta u16, flags u8)  12 end of batch
//     13 close (requests after it in the batch fail with errc::closed; the
//        image is reopened after the batch)
//     14 check, or make_empty when the next byte % 4 == 3
//     15 block status (+ the 6 bytes of a request)
//   zone % 5 picks a base: 0, the first and second L2 boundary, the end of
//   the image, the end of the backing file; delta (signed, in sectors, modulo
//   4 clusters + 16 sectors) moves from it. len: 0-63 -> 1-64 sectors,
//   64-127 -> 1-4 clusters, 128-191 -> 0-3 clusters + 1-16 sectors,
//   192-254 -> 2-16 clusters, 255 -> 0 bytes. flags: bit0 FUA; bit1 may_unmap;
//   bits2-3 = 2: offset misaligned by 1 + extra % 511, = 3: length
//   misaligned; bit4 scatter-gather in three pieces cut at extra-chosen points.
//   A batch holds at most 16 operations, an input at most 160.
//
// Requests in a batch are all in flight at once. After it completes:
//   - every error is the one expected (unaligned_request, out_of_range,
//     closed, shrink_not_supported, image_size_unaligned, image_too_large,
//     or none), judged in issue order (a grow or close changes what follows;
//     see plan());
//   - grow zeroes the new range where the backing file would show through;
//   - every sector a read returned holds its value before the batch or the
//     value of a write or write-zeroes of the batch covering it;
//   - make_empty drops every write before it (the model goes back to the
//     backing file's contents);
//   - check finds no corruption and no leak; block status covers its range,
//     and for sectors no request of the batch wrote: zero extents are zeros,
//     backing-file extents hold the backing data, data extents point at
//     file bytes holding the sector;
//   - written ranges read back: sectors one request wrote hold its value,
//     sectors several wrote hold one of theirs (the model then takes it);
//     an unaligned or out-of-range request changed nothing;
//   - one cluster at each zone base reads as the model says.
// At the end: close, reopen, NEED_CHECK clear, every sector the model knows
// reads back, block status of the whole image agrees, check finds nothing.
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "fuzz_support.hpp"
#include "qed/image.hpp"
#include "support/chaos_file.hpp"
#include "support/memory_fs.hpp"
#include "support/model.hpp"

using namespace qed;
using namespace qed::fuzz;
using qed::test::fill_sector;

namespace {

constexpr std::size_t max_batch = 16;
constexpr std::size_t max_ops = 160;
constexpr std::uint64_t backing_tag = 1;
const std::string image_name = "top.qed";
const std::string backing_name = "base.raw";

struct reader {
    const std::uint8_t* p;
    std::size_t n;
    bool empty() const { return n == 0; }
    std::uint8_t u8() {
        if (!n) return 0;
        --n;
        return *p++;
    }
    std::uint16_t u16() {
        const std::uint16_t lo = u8();
        return static_cast<std::uint16_t>(lo | u8() << 8);
    }
    std::uint32_t u32() {
        const std::uint32_t lo = u16();
        return lo | std::uint32_t{u16()} << 16;
    }
};

struct config {
    std::uint32_t cluster_size = 4096;
    std::uint32_t table_size = 1;
    bool backing = false;
    bool backing_format_raw = false;
    bool short_timer = false;
    bool chaos = true;
    std::size_t l2_cache = 1;
    std::uint64_t create_size = 0;  ///< as passed to create
    std::uint64_t size = 0;         ///< rounded up to 512
    std::uint64_t backing_size = 0;
    std::uint32_t seed = 0;
};

struct op {
    enum kind_t { read, write, zeroes, flush, grow, close, check, status, make_empty } kind = read;
    std::uint64_t off = 0, len = 0, new_size = 0;
    std::uint64_t tag = 0;        ///< write: value written; zeroes: 0
    std::uint64_t grow_from = 0;  ///< grow: the size it grows from
    bool fua = false, may_unmap = true;
    std::uint8_t extra = 0;
    bool split = false;
    std::vector<std::error_code> allowed;  ///< results it may have (see plan())
    std::vector<unsigned> epochs;          ///< make_empty operations that may have run before it
    // results
    std::vector<std::uint8_t> buf;
    std::error_code ec;
    bool done = false;
    unsigned order = 0;  ///< completion order in the batch (for traces)
    std::vector<extent> ext;
    check_result cr;
};

const char* kind_name(op::kind_t k) {
    static const char* names[] = {"read", "write", "zeroes", "flush", "grow", "close", "check", "status", "make_empty"};
    return names[k];
}

std::string describe(const op& o) {
    return std::string(kind_name(o.kind)) + " " + std::to_string(o.off) + "+" + std::to_string(o.len) +
           (o.kind == op::grow ? " to " + std::to_string(o.new_size) : "") + " tag " + std::to_string(o.tag) +
           (o.fua ? " fua" : "") + (o.kind == op::zeroes && !o.may_unmap ? " no-unmap" : "") +
           (o.split ? " split" : "");
}

class harness {
public:
    explicit harness(reader& in) : in_(in) {
        decode_config();
        setup_backing();
        create_options co;
        // No size with a backing file: the image takes the backing file's size.
        if (cfg_.create_size || !cfg_.backing)
            co.size = cfg_.create_size;
        else
            co.size = {};
        co.cluster_size = cfg_.cluster_size;
        co.table_size = cfg_.table_size;
        co.opener = fs_.opener();
        if (cfg_.backing) {
            co.backing_file = backing_name;
            if (cfg_.backing_format_raw) co.backing_format = image_format::raw;
        }
        auto [ec] = run_op<std::error_code>(ioc_, "create", [&](auto h) {
            image::async_create(ioc_.get_executor(), image_name, std::move(co), std::move(h));
        });
        QED_FUZZ_CHECK(!ec, "create failed: " + ec_str(ec));
        fs_.wrap = [this](std::shared_ptr<block_file> f, const std::string&) -> std::shared_ptr<block_file> {
            if (!cfg_.chaos) return f;
            return std::make_shared<qed::test::chaos_file>(std::move(f), cfg_.seed + 7919 * opens_);
        };
        reopen();
        QED_FUZZ_CHECK(img_.size() == cfg_.size,
                       "created size " + std::to_string(img_.size()) + ", expected " + std::to_string(cfg_.size));
    }

    void run() {
        std::size_t total = 0;
        while (!in_.empty() && total < max_ops) {
            std::vector<std::unique_ptr<op>> batch;
            while (!in_.empty() && batch.size() < max_batch && total < max_ops) {
                const std::uint8_t k = in_.u8() % 16;
                if (k == 12) break;
                batch.push_back(decode_op(k));
                ++total;
            }
            if (!batch.empty()) run_batch(batch);
        }
        finish();
    }

private:
    // ---- input ---------------------------------------------------------------
    void decode_config() {
        const std::uint8_t c = in_.u8();
        const std::uint8_t d = in_.u8();
        cfg_.cluster_size = c & 1 ? 65536 : 4096;
        static const std::uint32_t tables[] = {1, 4, 16, 8};
        cfg_.table_size = tables[(c >> 1) & 3];
        cfg_.backing = c & 8;
        cfg_.backing_format_raw = c & 16;
        cfg_.short_timer = c & 32;
        cfg_.chaos = !(c & 64);
        cfg_.l2_cache = 1 + (d & 7);
        span_ = std::uint64_t{cfg_.cluster_size} / 8 * cfg_.table_size * cfg_.cluster_size;
        cfg_.create_size = ((d >> 3) & 3) % 3 * span_ + std::uint64_t{in_.u16()} * 512 + (c & 128 ? 100 : 0);
        cfg_.size = (cfg_.create_size + 511) / 512 * 512;
        cfg_.backing_size = ((d >> 5) & 3) % 3 * span_ + std::uint64_t{in_.u16()} * 512 + (d & 128 ? 300 : 0);
        cfg_.seed = in_.u32();
        // Create without a size takes the backing file's (a raw size rounds up to 512).
        if (cfg_.create_size == 0 && cfg_.backing) cfg_.size = (cfg_.backing_size + 511) / 512 * 512;
        size_ = cfg_.size;
        if (verbose())
            std::fprintf(stderr,
                         "config: cluster %u table %u size %llu backing %s%s size %llu timer %s chaos %d cache %zu\n",
                         cfg_.cluster_size, cfg_.table_size, static_cast<unsigned long long>(cfg_.size),
                         cfg_.backing ? "raw" : "none", cfg_.backing_format_raw ? " (format given)" : "",
                         static_cast<unsigned long long>(cfg_.backing_size), cfg_.short_timer ? "0ms" : "1h",
                         cfg_.chaos, cfg_.l2_cache);
    }

    std::uint64_t zone_base(unsigned z) const {
        switch (z % 5) {
            case 0:
                return 0;
            case 1:
                return span_;
            case 2:
                return 2 * span_;
            case 3:
                return size_;
            default:
                return backing_floor();
        }
    }

    std::unique_ptr<op> decode_op(std::uint8_t k) {
        auto o = std::make_unique<op>();
        const std::uint64_t cs = cfg_.cluster_size;
        if (k == 10)
            o->kind = op::flush;
        else if (k == 13)
            o->kind = op::close;
        else if (k == 14)
            o->kind = in_.u8() % 4 == 3 ? op::make_empty : op::check;
        else if (k == 11) {
            o->kind = op::grow;
            const auto delta = static_cast<std::int16_t>(in_.u16());
            const std::uint8_t f = in_.u8();
            const std::int64_t d = static_cast<std::int64_t>(delta) * 512;
            o->new_size = d < 0 && static_cast<std::uint64_t>(-d) > size_ ? 0 : size_ + d;
            if (f & 4) o->new_size += span_;
            if (f & 1) o->new_size += 100;
            if (f & 2) o->new_size = max_image_size(cfg_.cluster_size, cfg_.table_size) + 512;
        } else {
            o->kind = k <= 4 ? op::write : k <= 7 ? op::read : k <= 9 ? op::zeroes : op::status;
            const std::uint8_t zone = in_.u8();
            const auto delta = static_cast<std::int16_t>(in_.u16());
            const std::uint8_t lenc = in_.u8();
            const std::uint8_t f = in_.u8();
            o->extra = in_.u8();
            const std::int64_t window = static_cast<std::int64_t>(4 * cs / 512 + 16);
            const std::int64_t s = static_cast<std::int64_t>(zone_base(zone) / 512) + delta % window;
            o->off = s < 0 ? 0 : static_cast<std::uint64_t>(s) * 512;
            switch (lenc >> 6) {
                case 0:
                    o->len = (std::uint64_t{lenc & 63u} + 1) * 512;
                    break;
                case 1:
                    o->len = (std::uint64_t{lenc & 3u} + 1) * cs;
                    break;
                case 2:
                    o->len = std::uint64_t{lenc & 3u} * cs + (std::uint64_t{(lenc >> 2) & 15u} + 1) * 512;
                    break;
                default:
                    o->len = lenc == 255 ? 0 : (std::uint64_t{lenc & 7u} + 1) * 2 * cs;
                    break;
            }
            o->fua = f & 1;
            o->may_unmap = f & 2;
            o->split = f & 16;
            if (((f >> 2) & 3) == 2) o->off += 1 + o->extra % 511;
            if (((f >> 2) & 3) == 3) o->len += 1 + o->extra % 511;
            if (o->kind == op::write) o->tag = next_tag_++;
        }
        return o;
    }

    // ---- the backing file and the model --------------------------------------
    std::uint64_t backing_floor() const { return cfg_.backing ? cfg_.backing_size / 512 * 512 : 0; }

    /// Sectors of the backing file that hold data (the rest are holes).
    bool seeded(std::uint64_t s) const {
        if (!cfg_.backing) return false;
        const std::uint64_t end = backing_floor() / 512;
        if (s >= end) return false;
        const std::uint64_t z = 2 * cfg_.cluster_size / 512 + 8;
        const std::uint64_t b = span_ / 512;
        return s < z || (s + z >= b && s < b + z) || s + z >= end;
    }
    std::uint64_t default_tag(std::uint64_t s) const { return seeded(s) ? backing_tag : 0; }
    /// Call f(s) for every seeded sector s in [lo, hi).
    template <class F>
    void for_each_seeded(std::uint64_t lo, std::uint64_t hi, F f) const {
        if (!cfg_.backing) return;
        const std::uint64_t z = 2 * cfg_.cluster_size / 512 + 8, b = span_ / 512, end = backing_floor() / 512;
        std::uint64_t zones[] = {0, b > z ? b - z : 0, end > z ? end - z : 0};
        std::sort(std::begin(zones), std::end(zones));
        std::uint64_t next = lo;  // zones may overlap: visit each sector once
        for (std::uint64_t zs : zones)
            for (std::uint64_t s = std::max({zs, lo, next}); s < std::min(zs + 2 * z, hi); ++s) {
                if (seeded(s)) f(s);
                next = s + 1;
            }
    }
    std::uint64_t tag(std::uint64_t s) const {
        auto it = tags_.find(s);
        return it != tags_.end() ? it->second : default_tag(s);
    }

    void setup_backing() {
        if (!cfg_.backing) return;
        auto& st = fs_.storage(backing_name);
        st->resize(cfg_.backing_size);
        const std::uint64_t end = backing_floor() / 512;
        const std::uint64_t z = 2 * cfg_.cluster_size / 512 + 8;
        const std::uint64_t b = span_ / 512;
        std::vector<std::uint8_t> buf;
        auto seed_range = [&](std::uint64_t lo, std::uint64_t hi) {
            hi = std::min(hi, end);
            if (lo >= hi) return;
            buf.resize((hi - lo) * 512);
            for (std::uint64_t s = lo; s < hi; ++s) fill_sector(&buf[(s - lo) * 512], backing_tag, s);
            st->write(lo * 512, {reinterpret_cast<const std::byte*>(buf.data()), buf.size()});
        };
        // The same zones as seeded(), merged where they overlap.
        std::vector<std::pair<std::uint64_t, std::uint64_t>> zones{
            {0, z}, {b > z ? b - z : 0, b + z}, {end > z ? end - z : 0, end}};
        std::sort(zones.begin(), zones.end());
        std::uint64_t done = 0;
        for (auto [lo, hi] : zones) {
            lo = std::max(lo, done);
            seed_range(lo, hi);
            done = std::max(done, hi);
        }
    }

    // ---- opening ------------------------------------------------------------
    void reopen() {
        ++opens_;
        open_options o;
        o.opener = fs_.opener();
        o.l2_cache_size = cfg_.l2_cache;
        o.need_check_timeout = cfg_.short_timer ? std::chrono::milliseconds(0) : std::chrono::hours(1);
        o.log = [](std::string_view line) {
            if (verbose()) std::fprintf(stderr, "  log: %.*s\n", static_cast<int>(line.size()), line.data());
        };
        auto [ec, i] = open_image(ioc_, image_name, std::move(o));
        QED_FUZZ_CHECK(!ec, "open failed: " + ec_str(ec));
        img_ = std::move(i);
        QED_FUZZ_CHECK(img_.size() == size_,
                       "reopened with size " + std::to_string(img_.size()) + ", expected " + std::to_string(size_));
        QED_FUZZ_CHECK(!img_.info().need_check, "NEED_CHECK set after a clean close");
        closed_ = false;
    }

    // ---- one batch -----------------------------------------------------------
    std::error_code expected_io(const op& o, bool closed, std::uint64_t size) const {
        if (closed) return errc::closed;
        if (o.off % 512 || o.len % 512) return errc::unaligned_request;
        if (o.off > size || o.len > size - o.off) return errc::out_of_range;
        return {};
    }

    static bool exclusive(const op& o) {
        return o.kind == op::grow || o.kind == op::check || o.kind == op::close || o.kind == op::make_empty;
    }

    /// The image state an operation of a batch runs against.
    struct state {
        bool closed = false;
        std::uint64_t size = 0;
        unsigned empties = 0;  ///< make_empty operations run so far in the batch
    };

    /// The result of a request (anything but an exclusive operation) run in `st`.
    std::error_code expected_request(const op& o, const state& st) const {
        if (o.kind == op::flush) return st.closed ? make_error_code(errc::closed) : std::error_code{};
        return expected_io(o, st.closed, st.size);
    }

    /// The result of an exclusive operation run in `st`; updates `st`.
    std::error_code run_exclusive_op(const op& o, state& st) const {
        std::error_code ec = st.closed ? make_error_code(errc::closed) : std::error_code{};
        switch (o.kind) {
            case op::make_empty:
                if (!ec) ++st.empties;
                break;
            case op::close:
                st.closed = true;
                break;
            case op::grow: {
                const std::uint64_t max = max_image_size(cfg_.cluster_size, cfg_.table_size);
                if (!ec)
                    ec = o.new_size < st.size ? make_error_code(errc::shrink_not_supported)
                         : o.new_size % 512   ? make_error_code(errc::image_size_unaligned)
                         : o.new_size > max   ? make_error_code(errc::image_too_large)
                                              : std::error_code{};
                if (!ec) st.size = o.new_size;
                break;
            }
            default:
                break;
        }
        return ec;
    }

    /// Work out what each operation of a batch may return.
    ///
    /// Everything takes effect in issue order, as the API documentation
    /// says: a request issued after the k-th exclusive operation (grow,
    /// check, close, make_empty) and before the next one runs in the state
    /// after the k-th.
    void plan(std::vector<std::unique_ptr<op>>& batch) {
        std::vector<state> states{state{closed_, size_, 0}};  // states[j]: after j exclusive operations
        for (auto& o : batch) {
            if (!exclusive(*o)) continue;
            state st = states.back();
            o->allowed.assign(1, run_exclusive_op(*o, st));
            o->epochs.assign(1, states.back().empties);
            o->grow_from = states.back().size;
            states.push_back(st);
        }
        std::size_t k = 0;
        for (auto& o : batch) {
            if (exclusive(*o)) {
                ++k;
                continue;
            }
            o->allowed.assign(1, expected_request(*o, states[k]));
            o->epochs.clear();
        }
        batch_states_ = std::move(states);
    }

    /// After the batch: the make_empty epoch a request ran in.
    void settle_epochs(std::vector<std::unique_ptr<op>>& batch) const {
        std::size_t k = 0;
        for (auto& o : batch) {
            if (exclusive(*o)) {
                ++k;
                continue;
            }
            o->epochs.assign(1, batch_states_[k].empties);
        }
    }

    void issue(op& o, std::size_t& pending) {
        ++pending;
        op* p = &o;
        auto done_ec = [p, &pending](std::error_code ec, auto&&...) {
            p->ec = ec;
            p->done = true;
            p->order = pending;
            --pending;
        };
        auto make_pieces = [p](auto* base) {
            using buffer = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(base)>>,
                                              boost::asio::const_buffer, boost::asio::mutable_buffer>;
            std::vector<buffer> v;
            const std::size_t n = p->buf.size();
            if (!p->split || n < 3) {
                v.emplace_back(base, n);
                return v;
            }
            std::size_t a = (p->extra * 37u) % n, b = (p->extra * 101u + 7) % n;
            if (a > b) std::swap(a, b);
            v.emplace_back(base, a);
            v.emplace_back(base + a, b - a);
            v.emplace_back(base + b, n - b);
            return v;
        };
        switch (o.kind) {
            case op::read: {
                o.buf.assign(o.len, 0xa5);
                img_.async_read_at(o.off, make_pieces(o.buf.data()), done_ec);
                break;
            }
            case op::write: {
                o.buf.resize(o.len);
                for (std::uint64_t k = 0; k < o.len / 512; ++k) fill_sector(&o.buf[k * 512], o.tag, o.off / 512 + k);
                img_.async_write_at(o.off, make_pieces(static_cast<const std::uint8_t*>(o.buf.data())),
                                    write_options{o.fua}, done_ec);
                break;
            }
            case op::zeroes:
                img_.async_write_zeroes(o.off, o.len, zero_options{o.may_unmap, o.fua}, done_ec);
                break;
            case op::flush:
                img_.async_flush(done_ec);
                break;
            case op::grow:
                img_.async_grow(o.new_size, done_ec);
                break;
            case op::close:
                img_.async_close(done_ec);
                break;
            case op::check:
                img_.async_check(check_options{check_options::repair::none},
                                 [p, &pending](std::error_code ec, check_result r) {
                                     p->ec = ec;
                                     p->cr = std::move(r);
                                     p->done = true;
                                     p->order = pending;
                                     --pending;
                                 });
                break;
            case op::make_empty:
                img_.async_make_empty(done_ec);
                break;
            case op::status:
                img_.async_block_status(o.off, o.len, [p, &pending](std::error_code ec, std::vector<extent> v) {
                    p->ec = ec;
                    p->ext = std::move(v);
                    p->done = true;
                    p->order = pending;
                    --pending;
                });
                break;
        }
    }

    void run_batch(std::vector<std::unique_ptr<op>>& batch) {
        ++batches_;
        plan(batch);
        std::size_t pending = 0;
        for (auto& o : batch) issue(*o, pending);
        run_until(
            ioc_, [&] { return pending == 0; }, "batch " + std::to_string(batches_));

        if (verbose()) {
            std::fprintf(stderr, "batch %u:\n", batches_);
            for (auto& o : batch)
                std::fprintf(stderr, "  %s -> %s (completed %zu/%zu)\n", describe(*o).c_str(), ec_str(o->ec).c_str(),
                             batch.size() - o->order, batch.size());
        }
        for (auto& o : batch) {
            std::string allowed;
            for (auto ec : o->allowed) allowed += " " + ec_str(ec);
            QED_FUZZ_CHECK(std::find(o->allowed.begin(), o->allowed.end(), o->ec) != o->allowed.end(),
                           "batch " + std::to_string(batches_) + ": " + describe(*o) + " gave " + ec_str(o->ec) +
                               ", expected" + allowed);
        }
        settle_epochs(batch);
        const state final_state = batch_states_.back();
        const unsigned empties = final_state.empties;

        // Grow zeroes the new range where the backing file would show through.
        auto grow_zeroes = [this](const op& g) {
            const std::uint64_t bdev = cfg_.backing ? (cfg_.backing_size + 511) / 512 * 512 : 0;
            for_each_seeded(g.grow_from / 512, std::min(g.new_size, bdev) / 512,
                            [this](std::uint64_t s) { tags_[s] = 0; });
        };
        for (auto& o : batch)
            if (o->kind == op::grow && !o->ec) grow_zeroes(*o);

        // Values each sector may have taken in this batch.
        std::map<std::uint64_t, std::vector<std::uint64_t>> seen;
        for (auto& o : batch) {
            if ((o->kind != op::write && o->kind != op::zeroes) || o->ec) continue;
            for (std::uint64_t s = o->off / 512; s < (o->off + o->len) / 512; ++s) seen[s].push_back(o->tag);
        }
        for (auto& o : batch) {
            if (o->ec) continue;
            if (o->kind == op::read) verify_read(*o, seen, empties != 0);
            if (o->kind == op::status) {
                if (empties)
                    check_cover(o->ext, o->off, o->len, "block status in a batch");
                else
                    verify_status(o->ext, o->off, o->len, seen, "block status in a batch");
            }
            if (o->kind == op::check)
                QED_FUZZ_CHECK(o->cr.corruptions == 0 && o->cr.leaks == 0 && o->cr.check_errors == 0,
                               "check in batch " + std::to_string(batches_) + ": " + std::to_string(o->cr.corruptions) +
                                   " corruptions, " + std::to_string(o->cr.leaks) + " leaks, " +
                                   std::to_string(o->cr.check_errors) + " errors" +
                                   (o->cr.messages.empty() ? "" : ": " + o->cr.messages.front()));
        }
        // make_empty drops every cluster: the backing file shows again, but
        // for the ranges grown (and zeroed) after the last make_empty.
        if (empties) {
            tags_.clear();
            for (auto& o : batch)
                if (o->kind == op::grow && !o->ec && o->epochs.front() == empties) grow_zeroes(*o);
        }
        size_ = final_state.size;
        closed_ = final_state.closed;
        if (closed_) reopen();

        // What each written sector may hold now: the value of a write that
        // may have run after the last make_empty, or (if the write may have
        // run before it) what the sector holds without it.
        std::map<std::uint64_t, std::vector<std::uint64_t>> racing;
        for (auto& o : batch) {
            if ((o->kind != op::write && o->kind != op::zeroes) || o->ec) continue;
            const bool last = std::count(o->epochs.begin(), o->epochs.end(), empties) != 0;
            const bool wiped = std::any_of(o->epochs.begin(), o->epochs.end(), [&](unsigned e) { return e < empties; });
            for (std::uint64_t s = o->off / 512; s < (o->off + o->len) / 512; ++s) {
                if (last) racing[s].push_back(o->tag);
                if (wiped) racing[s].push_back(tag(s));
            }
        }

        // Settle the model: one writer decides; several leave a choice that
        // reading back resolves.
        std::set<std::uint64_t> choice;
        for (const auto& entry : racing) {
            const std::vector<std::uint64_t>& ts = entry.second;
            if (std::all_of(ts.begin(), ts.end(), [&ts](std::uint64_t t) { return t == ts.front(); }))
                tags_[entry.first] = ts.front();
            else
                choice.insert(entry.first);
        }
        std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;  // [first, end) sectors
        for (auto& [s, ts] : racing) {
            if (!runs.empty() && runs.back().second == s && s - runs.back().first < 2048)
                ++runs.back().second;
            else
                runs.push_back({s, s + 1});
        }
        for (auto [lo, hi] : runs) read_back(lo, hi, &racing, &choice, "after batch");
        for (unsigned z = 0; z < 5; ++z) {
            const std::uint64_t base = zone_base(z) / 512;
            const std::uint64_t n = cfg_.cluster_size / 512;
            const std::uint64_t lo = base > n / 2 ? base - n / 2 : 0;
            const std::uint64_t hi = std::min(lo + n, size_ / 512);
            if (lo < hi) read_back(lo, hi, nullptr, nullptr, "zone probe");
        }
    }

    void verify_read(const op& o, const std::map<std::uint64_t, std::vector<std::uint64_t>>& racing, bool emptied) {
        std::vector<std::uint64_t> cand;
        for (std::uint64_t k = 0; k < o.len / 512; ++k) {
            const std::uint64_t s = o.off / 512 + k;
            cand.assign(1, tag(s));
            if (emptied) cand.push_back(default_tag(s));
            if (auto it = racing.find(s); it != racing.end())
                cand.insert(cand.end(), it->second.begin(), it->second.end());
            if (qed::test::model::match(&o.buf[k * 512], s, cand) < 0)
                mismatch("read in batch", s, &o.buf[k * 512], cand, describe(o));
        }
    }

    [[noreturn]] void mismatch(const std::string& when, std::uint64_t s, const std::uint8_t* got,
                               const std::vector<std::uint64_t>& cand, const std::string& what) {
        std::string c;
        for (auto t : cand) c += " " + std::to_string(t);
        fail(__FILE__, __LINE__, "sector content",
             when + " (batch " + std::to_string(batches_) + ", " + what + "): sector " + std::to_string(s) + " holds " +
                 qed::test::model::describe(got, s, next_tag_) + ", expected tag" + c);
    }

    /// Read sectors [lo, hi) and compare with the model; sectors in `choice`
    /// may hold any of their racing values, and the model takes what is there.
    void read_back(std::uint64_t lo, std::uint64_t hi,
                   const std::map<std::uint64_t, std::vector<std::uint64_t>>* racing,
                   const std::set<std::uint64_t>* choice, const std::string& when) {
        std::vector<std::uint8_t> buf((hi - lo) * 512, 0xa5);
        sync_ops ops{ioc_, img_};
        const std::error_code ec = ops.read(lo * 512, buf.data(), buf.size());
        QED_FUZZ_CHECK(!ec, when + ": read of sectors " + std::to_string(lo) + "-" + std::to_string(hi) +
                                " failed: " + ec_str(ec));
        std::vector<std::uint64_t> cand;
        for (std::uint64_t s = lo; s < hi; ++s) {
            const std::uint8_t* got = &buf[(s - lo) * 512];
            if (choice && choice->count(s)) {
                cand = racing->at(s);
                const int i = qed::test::model::match(got, s, cand);
                if (i < 0) mismatch(when, s, got, cand, "overlapping writes");
                tags_[s] = cand[static_cast<std::size_t>(i)];
            } else {
                cand.assign(1, tag(s));
                if (qed::test::model::match(got, s, cand) < 0) mismatch(when, s, got, cand, "read back");
            }
        }
    }

    /// Block status agrees with the model for sectors no request of the
    /// batch wrote (the only ones whose value is known).
    static void check_cover(const std::vector<extent>& ext, std::uint64_t off, std::uint64_t len,
                            const std::string& when) {
        std::uint64_t pos = off;
        for (const auto& e : ext) {
            QED_FUZZ_CHECK(e.offset == pos && e.length > 0 && e.offset % 512 == 0 && e.length % 512 == 0,
                           when + ": extent " + std::to_string(e.offset) + "+" + std::to_string(e.length) +
                               ", expected one at " + std::to_string(pos));
            pos += e.length;
        }
        QED_FUZZ_CHECK(pos == off + len, when + ": extents end at " + std::to_string(pos));
    }

    void verify_status(const std::vector<extent>& ext, std::uint64_t off, std::uint64_t len,
                       const std::map<std::uint64_t, std::vector<std::uint64_t>>& racing, const std::string& when) {
        check_cover(ext, off, len, when);
        auto storage = fs_.storage(image_name);
        std::uint8_t want[512], got[512];
        for (const auto& e : ext) {
            const std::uint64_t lo = e.offset / 512, hi = (e.offset + e.length) / 512;
            // The sectors worth looking at: those the model has, the seeded
            // backing zones, and the extent's ends.
            std::set<std::uint64_t> look{lo, hi - 1};
            for (auto it = tags_.lower_bound(lo); it != tags_.end() && it->first < hi; ++it) look.insert(it->first);
            const std::uint64_t z = 2 * cfg_.cluster_size / 512 + 8, b = span_ / 512, end = backing_floor() / 512;
            for (std::uint64_t zs : {std::uint64_t{0}, b > z ? b - z : 0, end > z ? end - z : 0})
                for (std::uint64_t s = std::max(zs, lo); s < std::min(zs + 2 * z, hi); ++s) look.insert(s);
            for (std::uint64_t s : look) {
                if (racing.count(s)) continue;
                const std::uint64_t t = tag(s);
                const std::string where = when + ": sector " + std::to_string(s) + " in extent " +
                                          std::to_string(e.offset) + "+" + std::to_string(e.length) + " depth " +
                                          std::to_string(e.depth) + (e.zero ? " zero" : "") + (e.data ? " data" : "") +
                                          (e.present ? " present" : "");
                if (e.zero) {
                    QED_FUZZ_CHECK(t == 0, where + " holds tag " + std::to_string(t));
                } else if (e.depth == 1) {
                    QED_FUZZ_CHECK(cfg_.backing && t == default_tag(s),
                                   where + " (backing file) holds tag " + std::to_string(t));
                } else if (e.depth == 0 && e.data && e.host_offset) {
                    fill_sector(want, t, s);
                    storage->read(*e.host_offset + (s * 512 - e.offset), {reinterpret_cast<std::byte*>(got), 512});
                    QED_FUZZ_CHECK(std::memcmp(want, got, 512) == 0, where + " host " + std::to_string(*e.host_offset) +
                                                                         ": the file holds " +
                                                                         qed::test::model::describe(got, s, next_tag_) +
                                                                         ", expected tag " + std::to_string(t));
                } else {
                    QED_FUZZ_CHECK(false, where + ": an extent that is neither zero, backing nor data");
                }
            }
        }
    }

    // ---- the end ------------------------------------------------------------
    void finish() {
        sync_ops ops{ioc_, img_};
        QED_FUZZ_CHECK(!ops.close(), "close failed");
        closed_ = true;
        reopen();
        // Every sector the model knows, in runs.
        std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;
        for (auto& [s, t] : tags_) {
            if (s >= size_ / 512) continue;
            if (!runs.empty() && runs.back().second == s && s - runs.back().first < 2048)
                ++runs.back().second;
            else
                runs.push_back({s, s + 1});
        }
        for (auto [lo, hi] : runs) read_back(lo, hi, nullptr, nullptr, "after reopen");
        sync_ops ro{ioc_, img_};
        if (size_) {
            auto [sec, ext] = ro.block_status(0, size_);
            QED_FUZZ_CHECK(!sec, "block status of the whole image failed: " + ec_str(sec));
            verify_status(ext, 0, size_, {}, "final block status");
        }
        auto [cec, r] = ro.check(check_options::repair::none);
        QED_FUZZ_CHECK(!cec && r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0,
                       "final check: " + std::to_string(r.corruptions) + " corruptions, " + std::to_string(r.leaks) +
                           " leaks, " + std::to_string(r.check_errors) + " errors" +
                           (r.messages.empty() ? "" : ": " + r.messages.front()));
        QED_FUZZ_CHECK(!ro.close(), "final close failed");
        drain(ioc_);
    }

    reader& in_;
    config cfg_;
    std::uint64_t span_ = 0;
    boost::asio::io_context ioc_;
    qed::test::memory_fs fs_{ioc_.get_executor()};
    image img_;
    bool closed_ = true;
    unsigned opens_ = 0;
    unsigned batches_ = 0;
    std::uint64_t size_ = 0;
    std::uint64_t next_tag_ = 100;
    std::map<std::uint64_t, std::uint64_t> tags_;  ///< sector -> tag, where it differs from default_tag
    std::vector<state> batch_states_;              ///< see plan()
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    reader in{data, size};
    harness h(in);
    h.run();
    return 0;
}
