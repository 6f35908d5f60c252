// SPDX-License-Identifier: BSL-1.0
// The L2 table cache: bounded LRU of unused entries, entries in use never
// evicted; and, at image level, many L2 tables through a one-entry cache
// with many requests in flight (QEMU bug 9: an in-use entry evicted lost
// its update; two concurrent misses on one table caused a use-after-free).
#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <unordered_map>
#include <vector>

#include "qed/image.hpp"
#include "support/memory_fs.hpp"
#include "support/recording_file.hpp"
#include "support/sync.hpp"
#include "support/tmp_dir.hpp"
#include "table/l2_cache.hpp"

namespace asio = boost::asio;
namespace data = boost::unit_test::data;
using qed::detail::l2_cache;
using qed::detail::l2_entry;
using qed::detail::l2_ref;

namespace {

l2_ref make_entry(std::uint64_t offset, bool loaded = true) {
    auto e = std::make_shared<l2_entry>(offset, 512);
    e->loaded = loaded;
    e->t[0] = offset;  // something to recognise it by
    return e;
}

/// Insert without keeping a reference (an unused, loaded entry).
void insert_unused(l2_cache& c, std::uint64_t offset) {
    c.insert(make_entry(offset));
}

bool cached(l2_cache& c, std::uint64_t offset) {
    return static_cast<bool>(c.find(offset));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(unit)

BOOST_AUTO_TEST_CASE(find_returns_the_inserted_entry) {
    l2_cache c(4);
    auto e = make_entry(0x10000);
    c.insert(e);
    BOOST_TEST(c.size() == 1u);
    BOOST_TEST((c.find(0x10000) == e));
    BOOST_TEST(!c.find(0x20000));
    BOOST_TEST(c.find(0x10000)->t[0] == 0x10000u);
}

BOOST_AUTO_TEST_CASE(capacity_bounds_unused_entries) {
    l2_cache c(3);
    BOOST_TEST(c.capacity() == 3u);
    for (std::uint64_t i = 1; i <= 10; ++i) {
        insert_unused(c, i * 0x10000);
        BOOST_TEST(c.size() == std::min<std::uint64_t>(i, 3));
    }
    // The three most recent survive.
    BOOST_TEST(!cached(c, 0x10000));
    BOOST_TEST(!cached(c, 7 * 0x10000));
    BOOST_TEST(cached(c, 8 * 0x10000));
    BOOST_TEST(cached(c, 9 * 0x10000));
    BOOST_TEST(cached(c, 10 * 0x10000));
    BOOST_TEST(c.size() == 3u);
}

BOOST_AUTO_TEST_CASE(make_room_evicts_before_a_new_table_exists) {
    // A new table is allocated only after the cache made room for it: with
    // capacity 1 and huge tables, the old one is gone first.
    l2_cache c(2);
    insert_unused(c, 0x10000);
    insert_unused(c, 0x20000);
    auto held = c.find(0x20000);  // in use: stays
    c.make_room();
    BOOST_TEST(c.size() == 1u);
    BOOST_TEST(cached(c, 0x20000));
    c.make_room();  // nothing unused left to evict
    BOOST_TEST(c.size() == 1u);
    held.reset();
    c.set_capacity(1);
    c.make_room();
    BOOST_TEST(c.size() == 0u);
    insert_unused(c, 0x30000);
    insert_unused(c, 0x40000);
    c.set_capacity(5);
    BOOST_TEST(c.capacity() == 5u);
    BOOST_TEST(c.size() == 1u);
}

BOOST_AUTO_TEST_CASE(capacity_zero_means_one) {
    l2_cache c(0);
    BOOST_TEST(c.capacity() == 1u);
    insert_unused(c, 0x10000);
    insert_unused(c, 0x20000);
    BOOST_TEST(c.size() == 1u);
    BOOST_TEST(cached(c, 0x20000));
}

BOOST_AUTO_TEST_CASE(lru_order) {
    l2_cache c(3);
    insert_unused(c, 0xa0000);
    insert_unused(c, 0xb0000);
    insert_unused(c, 0xc0000);
    // Touch a: b becomes least recently used.
    BOOST_TEST(cached(c, 0xa0000));
    insert_unused(c, 0xd0000);
    BOOST_TEST(!cached(c, 0xb0000));
    BOOST_TEST(cached(c, 0xa0000));
    BOOST_TEST(cached(c, 0xc0000));
    BOOST_TEST(cached(c, 0xd0000));
    // Touch c, d, a in that order: c is now least recently used.
    BOOST_TEST(cached(c, 0xc0000));
    BOOST_TEST(cached(c, 0xd0000));
    BOOST_TEST(cached(c, 0xa0000));
    insert_unused(c, 0xe0000);  // evicts c
    BOOST_TEST(!cached(c, 0xc0000));
    insert_unused(c, 0xf0000);  // evicts d
    BOOST_TEST(!cached(c, 0xd0000));
    BOOST_TEST(cached(c, 0xa0000));
    BOOST_TEST(cached(c, 0xe0000));
    BOOST_TEST(cached(c, 0xf0000));
    BOOST_TEST(c.size() == 3u);
}

BOOST_AUTO_TEST_CASE(held_entry_is_never_evicted) {
    l2_cache c(2);
    l2_ref a = make_entry(0xa0000);
    c.insert(a);
    a->t[1] = 42;  // an update in progress through the user's reference
    insert_unused(c, 0xb0000);
    insert_unused(c, 0xc0000);  // over capacity: b goes, a (held, least recent) stays
    BOOST_TEST(c.size() == 2u);
    BOOST_TEST((c.find(0xa0000) == a));
    BOOST_TEST(!cached(c, 0xb0000));
    for (std::uint64_t i = 0; i < 100; ++i) insert_unused(c, 0x100000 + i * 0x10000);
    BOOST_TEST((c.find(0xa0000) == a));
    BOOST_TEST(c.find(0xa0000)->t[1] == 42u);
    BOOST_TEST(c.size() == 2u);
}

BOOST_AUTO_TEST_CASE(all_held_grows_then_trim_shrinks) {
    l2_cache c(2);
    std::vector<l2_ref> held;
    for (std::uint64_t i = 0; i < 6; ++i) {
        held.push_back(make_entry(0x10000 * (i + 1)));
        c.insert(held.back());
    }
    // Everything is in use: the cache holds more than its capacity.
    BOOST_TEST(c.size() == 6u);
    for (const auto& e : held) BOOST_TEST((c.find(e->offset) == e));
    // trim() while they are held changes nothing.
    c.trim();
    BOOST_TEST(c.size() == 6u);
    // Release all but one; trim brings it back to capacity, keeping the held one.
    const std::uint64_t keep = held[0]->offset;  // least recently used of all
    l2_ref still = held[0];
    held.clear();
    c.trim();
    BOOST_TEST(c.size() == 2u);
    BOOST_TEST((c.find(keep) == still));
    // The other survivor is the most recently used (the last one found above).
    BOOST_TEST(cached(c, 0x60000));
    still.reset();
    c.trim();
    BOOST_TEST(c.size() == 2u);
}

BOOST_AUTO_TEST_CASE(loading_entry_is_not_evicted) {
    // A table whose first read is still in flight must stay findable, so a
    // second miss on it waits for that load instead of starting another.
    l2_cache c(1);
    c.insert(make_entry(0x10000, /*loaded=*/false));
    insert_unused(c, 0x20000);
    insert_unused(c, 0x30000);
    auto e = c.find(0x10000);
    BOOST_TEST_REQUIRE(static_cast<bool>(e));
    BOOST_TEST(!e->loaded);
    e->loaded = true;
    e.reset();
    c.trim();
    BOOST_TEST(c.size() == 1u);
}

BOOST_AUTO_TEST_CASE(erase_removes_entry) {
    l2_cache c(4);
    insert_unused(c, 0x10000);
    insert_unused(c, 0x20000);
    l2_ref held = make_entry(0x30000, false);
    c.insert(held);
    c.erase(0x20000);
    BOOST_TEST(!cached(c, 0x20000));
    BOOST_TEST(c.size() == 2u);
    c.erase(0x30000);  // erase works on a held / loading entry (failed load)
    BOOST_TEST(!cached(c, 0x30000));
    BOOST_TEST(c.size() == 1u);
    c.erase(0x99990000);  // unknown: no-op
    BOOST_TEST(c.size() == 1u);
    // The offset can be inserted again afterwards, and LRU bookkeeping holds.
    insert_unused(c, 0x20000);
    insert_unused(c, 0x40000);
    insert_unused(c, 0x50000);
    insert_unused(c, 0x60000);
    BOOST_TEST(c.size() == 4u);
    BOOST_TEST(!cached(c, 0x10000));
    BOOST_TEST(cached(c, 0x20000));
}

BOOST_AUTO_TEST_CASE(clear_unused_keeps_held) {
    l2_cache c(8);
    l2_ref a = make_entry(0x10000);
    l2_ref b = make_entry(0x20000);
    c.insert(a);
    insert_unused(c, 0x30000);
    c.insert(b);
    insert_unused(c, 0x40000);
    BOOST_TEST(c.size() == 4u);
    c.clear_unused();
    BOOST_TEST(c.size() == 2u);
    BOOST_TEST((c.find(0x10000) == a));
    BOOST_TEST((c.find(0x20000) == b));
    BOOST_TEST(!cached(c, 0x30000));
    BOOST_TEST(!cached(c, 0x40000));
    a.reset();
    b.reset();
    c.clear_unused();
    BOOST_TEST(c.size() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------
// Image level
// ---------------------------------------------------------------------------

namespace {

struct image_env {
    /// `real`: files in a temp dir through the default opener (io_uring or
    /// threads: completions arrive out of order); else memory files.
    explicit image_env(bool real_) : real(real_) {
        if (real) dir.emplace("l2_cache");
    }
    bool real;
    asio::io_context ioc;
    qed::test::memory_fs fs{ioc.get_executor()};
    std::optional<qed::test::tmp_dir> dir;

    std::string path(const std::string& name) const { return real ? *dir / name : name; }

    qed::create_options create_opts(std::uint64_t size, std::uint32_t cs, std::uint32_t ts) {
        qed::create_options o;
        o.size = size;
        o.cluster_size = cs;
        o.table_size = ts;
        if (!real) o.opener = fs.opener();
        return o;
    }
    qed::open_options open_opts(std::size_t cache) {
        qed::open_options o;
        if (!real) o.opener = fs.opener();
        o.l2_cache_size = cache;
        return o;
    }

    template <class Pred>
    void run_until(Pred done) {
        ioc.restart();
        while (!done()) {
            if (ioc.run_one() == 0) {
                BOOST_TEST_REQUIRE(done(), "requests never completed (hang)");
                break;
            }
        }
    }
};

/// The byte a write with `seed` puts at guest offset `pos`.
std::uint8_t pat(std::uint64_t pos, unsigned seed) {
    return static_cast<std::uint8_t>(((pos >> 9) * 31 + seed * 7 + 1) & 0xff);
}

/// A sector-granular model of the guest: 0 means never written (reads zeros).
struct model {
    explicit model(std::uint64_t) {}
    void write(std::uint64_t off, std::uint64_t len, unsigned s) {
        for (std::uint64_t i = off / 512; i < (off + len) / 512; ++i) seed[i] = s;
    }
    void fill(std::uint64_t off, std::uint8_t* p, std::uint64_t len) const {
        // off and len are sector multiples: one lookup per sector.
        for (std::uint64_t i = 0; i < len; i += 512) {
            const auto it = seed.find((off + i) / 512);
            if (it == seed.end()) {
                std::memset(p + i, 0, 512);
                continue;
            }
            const std::uint8_t v = pat(off + i, it->second);  // constant within a sector
            std::memset(p + i, v, 512);
        }
    }
    std::unordered_map<std::uint64_t, unsigned> seed;  // sector -> seed of its last write
};

struct request {
    std::uint64_t off;
    std::uint64_t len;
    unsigned seed;
};

/// Non-overlapping requests spread over the whole image: one per slot,
/// each inside its slot (some slots straddle an L2 table boundary).
std::vector<request> spread_requests(std::uint64_t image_size, std::uint64_t span, std::size_t n, unsigned first_seed,
                                     std::uint32_t seed) {
    std::mt19937_64 rng(seed);
    const std::uint64_t slot = image_size / n;
    std::vector<request> out;
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint64_t base = i * slot;
        std::uint64_t len = 512 * (1 + rng() % 32);  // up to 16 KiB
        std::uint64_t off = base + 512 * (rng() % ((slot - len) / 512));
        // Every 7th request crosses the next L2 boundary if it falls in this slot.
        const std::uint64_t boundary = (base / span + 1) * span;
        if (i % 7 == 3 && boundary > base + 8192 && boundary + 8192 < base + slot) {
            off = boundary - 4096;
            len = 8192;
        }
        out.push_back({off, len, first_seed + static_cast<unsigned>(i)});
    }
    return out;
}

void issue_writes(image_env& env, qed::image& img, const std::vector<request>& reqs,
                  std::vector<std::vector<std::uint8_t>>& bufs, std::size_t& done, std::size_t& errors) {
    for (const auto& r : reqs) {
        bufs.emplace_back(r.len);
        auto& b = bufs.back();
        for (std::uint64_t i = 0; i < r.len; ++i) b[i] = pat(r.off + i, r.seed);
        img.async_write_at(r.off, asio::buffer(b), [&](std::error_code ec, std::size_t) {
            ++done;
            if (ec) {
                ++errors;
                BOOST_TEST_MESSAGE("write failed: " << ec.message());
            }
        });
    }
    (void)env;
}

/// Read every request's range (plus some untouched ranges) concurrently and
/// compare with the model. Returns the number of mismatching reads.
std::size_t verify_concurrently(image_env& env, qed::image& img, const model& m, const std::vector<request>& reqs,
                                std::uint64_t image_size) {
    struct rd {
        std::uint64_t off;
        std::vector<std::uint8_t> buf;
    };
    std::vector<std::unique_ptr<rd>> reads;
    for (const auto& r : reqs) {
        // A little around each request too (prefill/postfill of the cluster).
        const std::uint64_t off = r.off >= 4096 ? r.off - 4096 : 0;
        const std::uint64_t len = std::min<std::uint64_t>(r.len + 8192, image_size - off);
        reads.push_back(std::make_unique<rd>(rd{off, std::vector<std::uint8_t>(len, 0xee)}));
    }
    std::size_t done = 0, errors = 0;
    for (auto& r : reads) {
        img.async_read_at(r->off, asio::buffer(r->buf), [&](std::error_code ec, std::size_t) {
            ++done;
            errors += ec ? 1 : 0;
        });
    }
    env.run_until([&] { return done == reads.size(); });
    BOOST_TEST(errors == 0u);
    std::size_t bad = 0;
    std::vector<std::uint8_t> expect;
    for (const auto& r : reads) {
        expect.resize(r->buf.size());
        m.fill(r->off, expect.data(), expect.size());
        if (expect != r->buf) {
            if (bad < 5) {
                const auto mm = std::mismatch(expect.begin(), expect.end(), r->buf.begin());
                BOOST_TEST_MESSAGE("mismatch in read at " << r->off << " (+" << (mm.first - expect.begin())
                                                          << "): expected " << int(*mm.first) << " got "
                                                          << int(*mm.second));
            }
            ++bad;
        }
    }
    return bad;
}

struct geometry_case {
    std::uint32_t cluster_size;
    std::uint32_t table_size;
    std::size_t cache;
    bool real_file;
};
std::ostream& operator<<(std::ostream& os, const geometry_case& g) {
    return os << "cluster " << g.cluster_size << " table " << g.table_size << " cache " << g.cache
              << (g.real_file ? " real file" : " memory");
}

const std::vector<geometry_case> image_cases = {{4096, 1, 1, false},  {4096, 1, 2, false}, {4096, 4, 1, false},
                                                {65536, 1, 1, false}, {4096, 1, 1, true},  {65536, 1, 1, true}};

}  // namespace

BOOST_AUTO_TEST_SUITE(image_level)

BOOST_DATA_TEST_CASE(tiny_cache_many_tables_concurrent, data::make(image_cases), gc) {
    image_env env(gc.real_file);
    const std::uint64_t span = std::uint64_t{gc.cluster_size} * gc.table_size / 8 * gc.cluster_size;
    const std::uint64_t size = 64 * span;  // 64 L2 tables
    BOOST_TEST_REQUIRE(
        !qed::test::create(env.ioc, env.path("img.qed"), env.create_opts(size, gc.cluster_size, gc.table_size)));
    model m(size);

    {
        auto [ec, img] = qed::test::open(env.ioc, env.path("img.qed"), env.open_opts(gc.cache));
        BOOST_TEST_REQUIRE(!ec, ec.message());

        // Round 1: one request per slot, all at once; they allocate L2 tables
        // and data clusters all over the image through a tiny cache.
        const auto r1 = spread_requests(size, span, 256, 1, 1);
        std::vector<std::vector<std::uint8_t>> bufs;
        std::size_t done = 0, errors = 0;
        issue_writes(env, img.img, r1, bufs, done, errors);
        env.run_until([&] { return done == r1.size(); });
        BOOST_TEST_REQUIRE(errors == 0u);
        for (const auto& r : r1) m.write(r.off, r.len, r.seed);
        BOOST_TEST(verify_concurrently(env, img.img, m, r1, size) == 0u);

        // Round 2: more writes into the now existing tables (L2 updates of
        // tables that must be loaded, updated and kept while others evict),
        // with reads of round-1 data in flight at the same time.
        auto r2 = spread_requests(size, span, 256, 1000, 2);
        // Keep round 2 off round 1's bytes so concurrent reads have one answer.
        std::vector<request> r2_ok;
        for (const auto& r : r2) {
            bool clash = false;
            for (const auto& q : r1)
                if (r.off < q.off + q.len + 8192 && q.off < r.off + r.len + 8192) clash = true;
            if (!clash) r2_ok.push_back(r);
        }
        BOOST_TEST_REQUIRE(r2_ok.size() > 100u);
        bufs.clear();
        bufs.reserve(r2_ok.size());
        done = errors = 0;
        std::vector<std::vector<std::uint8_t>> rbufs;
        std::size_t rdone = 0, rerr = 0;
        rbufs.reserve(r1.size());
        for (std::size_t i = 0; i < r1.size(); ++i) {
            // Interleave: a read of round 1 data, then a round 2 write.
            rbufs.emplace_back(r1[i].len);
            img.img.async_read_at(r1[i].off, asio::buffer(rbufs.back()), [&](std::error_code e, std::size_t) {
                ++rdone;
                rerr += e ? 1 : 0;
            });
            if (i < r2_ok.size()) {
                std::vector<request> one{r2_ok[i]};
                issue_writes(env, img.img, one, bufs, done, errors);
            }
        }
        env.run_until([&] { return done == r2_ok.size() && rdone == r1.size(); });
        BOOST_TEST_REQUIRE(errors == 0u);
        BOOST_TEST(rerr == 0u);
        std::size_t bad_reads = 0;
        for (std::size_t i = 0; i < r1.size(); ++i) {
            for (std::uint64_t j = 0; j < r1[i].len; ++j)
                if (rbufs[i][j] != pat(r1[i].off + j, r1[i].seed)) {
                    ++bad_reads;
                    break;
                }
        }
        BOOST_TEST(bad_reads == 0u);
        for (const auto& r : r2_ok) m.write(r.off, r.len, r.seed);
        std::vector<request> all = r1;
        all.insert(all.end(), r2_ok.begin(), r2_ok.end());
        BOOST_TEST(verify_concurrently(env, img.img, m, all, size) == 0u);

        auto [cec, cr] = img.check();
        BOOST_TEST(!cec);
        BOOST_TEST(cr.corruptions == 0u);
        BOOST_TEST(cr.leaks == 0u);
        BOOST_TEST_REQUIRE(!img.close());
    }

    // Reopen cold, again with a one-entry cache: every update reached the disk.
    {
        auto [ec, img] = qed::test::open(env.ioc, env.path("img.qed"), env.open_opts(gc.cache));
        BOOST_TEST_REQUIRE(!ec, ec.message());
        std::vector<request> everything;
        for (std::uint64_t off = 0; off < size; off += size / 512) everything.push_back({off, 512, 0});
        const auto r1 = spread_requests(size, span, 256, 1, 1);
        everything.insert(everything.end(), r1.begin(), r1.end());
        BOOST_TEST(verify_concurrently(env, img.img, m, everything, size) == 0u);
        auto [cec, cr] = img.check();
        BOOST_TEST(!cec);
        BOOST_TEST(cr.corruptions == 0u);
        BOOST_TEST(cr.leaks == 0u);
        BOOST_TEST_REQUIRE(!img.close());
    }
}

BOOST_DATA_TEST_CASE(concurrent_misses_on_one_table, data::make(image_cases), gc) {
    // Many requests miss on the same few tables at once (cold cache), while
    // writes to other tables force evictions.
    image_env env(gc.real_file);
    const std::uint64_t span = std::uint64_t{gc.cluster_size} * gc.table_size / 8 * gc.cluster_size;
    const std::uint64_t size = 8 * span;
    BOOST_TEST_REQUIRE(
        !qed::test::create(env.ioc, env.path("img.qed"), env.create_opts(size, gc.cluster_size, gc.table_size)));
    model m(size);
    {
        auto [ec, img] = qed::test::open(env.ioc, env.path("img.qed"), env.open_opts(gc.cache));
        BOOST_TEST_REQUIRE(!ec);
        // One cluster in each table, so every table exists.
        for (std::uint64_t t = 0; t < 8; ++t) {
            std::vector<std::uint8_t> b(4096);
            for (std::size_t i = 0; i < b.size(); ++i) b[i] = pat(t * span + i, 7);
            BOOST_TEST_REQUIRE(!img.write(t * span, b.data(), b.size()));
            m.write(t * span, 4096, 7);
        }
        BOOST_TEST_REQUIRE(!img.close());
    }
    auto [ec, img] = qed::test::open(env.ioc, env.path("img.qed"), env.open_opts(gc.cache));
    BOOST_TEST_REQUIRE(!ec);
    std::vector<std::vector<std::uint8_t>> rbufs, wbufs;
    std::vector<request> reads, writes;
    for (int i = 0; i < 64; ++i) {
        const std::uint64_t t = static_cast<std::uint64_t>(i % 2);  // tables 0 and 1: many misses each
        reads.push_back({t * span, 4096, 7});
        const std::uint64_t wt = 2 + static_cast<std::uint64_t>(i % 6);  // tables 2..7: updates
        writes.push_back(
            {wt * span + 65536 + static_cast<std::uint64_t>(i / 6) * 8192, 4096, 100 + static_cast<unsigned>(i)});
    }
    std::size_t done = 0, errors = 0;
    rbufs.reserve(reads.size());
    wbufs.reserve(writes.size());
    for (std::size_t i = 0; i < reads.size(); ++i) {
        rbufs.emplace_back(4096, 0xee);
        img.img.async_read_at(reads[i].off, asio::buffer(rbufs.back()), [&](std::error_code e, std::size_t) {
            ++done;
            errors += e ? 1 : 0;
        });
        std::vector<request> one{writes[i]};
        issue_writes(env, img.img, one, wbufs, done, errors);
    }
    env.run_until([&] { return done == reads.size() + writes.size(); });
    BOOST_TEST_REQUIRE(errors == 0u);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < reads.size(); ++i)
        for (std::size_t j = 0; j < 4096; ++j)
            if (rbufs[i][j] != pat(reads[i].off + j, 7)) {
                ++bad;
                break;
            }
    BOOST_TEST(bad == 0u);
    for (const auto& w : writes) m.write(w.off, w.len, w.seed);
    std::vector<request> all = reads;
    all.insert(all.end(), writes.begin(), writes.end());
    BOOST_TEST(verify_concurrently(env, img.img, m, all, size) == 0u);
    BOOST_TEST_REQUIRE(!img.close());

    auto [ec2, again] = qed::test::open(env.ioc, env.path("img.qed"), env.open_opts(1));
    BOOST_TEST_REQUIRE(!ec2);
    BOOST_TEST(verify_concurrently(env, again.img, m, all, size) == 0u);
    auto [cec, cr] = again.check();
    BOOST_TEST(!cec);
    BOOST_TEST(cr.corruptions == 0u);
    BOOST_TEST(cr.leaks == 0u);
    BOOST_TEST_REQUIRE(!again.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// The cache's budget in bytes (open_options::l2_cache_bytes): with 1 MiB
// tables, a budget of 3 MiB keeps 3 tables, so cycling through 3 tables
// reads each once, while through a budget of 2 MiB (or l2_cache_size 2, the
// secondary cap) every lookup of the cycle misses.
// ===========================================================================

BOOST_AUTO_TEST_SUITE(byte_budget)

BOOST_AUTO_TEST_CASE(tables_kept_follow_the_byte_budget) {
    asio::io_context ioc;
    qed::test::memory_fs fs{ioc.get_executor()};
    constexpr std::uint32_t cs = 65536, ts = 16;
    constexpr std::uint64_t table_bytes = std::uint64_t{cs} * ts;  // 1 MiB
    constexpr std::uint64_t span = table_bytes / 8 * cs;           // 8 GiB per table
    qed::create_options co;
    co.size = 4 * span;
    co.cluster_size = cs;
    co.table_size = ts;
    co.opener = fs.opener();
    BOOST_TEST_REQUIRE(!qed::test::create(ioc, "img.qed", co));
    std::vector<std::uint8_t> sector(512, 0x5c);
    {
        qed::open_options o;
        o.opener = fs.opener();
        auto [ec, img] = qed::test::open(ioc, "img.qed", o);
        BOOST_TEST_REQUIRE(!ec, ec.message());
        for (std::uint64_t t = 0; t < 3; ++t) BOOST_TEST_REQUIRE(!img.write(t * span, sector.data(), sector.size()));
        BOOST_TEST_REQUIRE(!img.close());
    }
    // Table reads (1 MiB at once) while reading a sector of tables 0, 1, 2, 0, 1, 2.
    auto table_reads = [&](std::size_t entries, std::size_t bytes) {
        std::size_t n = 0;
        fs.wrap = [&n](std::shared_ptr<qed::block_file> f,
                       const std::string& name) -> std::shared_ptr<qed::block_file> {
            return std::make_shared<qed::test::recording_file>(
                std::move(f), std::make_shared<qed::test::io_log>(), name, [&n](const qed::test::io_record& r) {
                    // Not a guest sector: a table load (which reads only the
                    // block of the table that holds its one entry).
                    if (r.what == qed::test::io_record::read && r.length != 512) ++n;
                });
        };
        qed::open_options o;
        o.opener = fs.opener();
        o.read_only = true;
        o.l2_cache_size = entries;
        o.l2_cache_bytes = bytes;
        auto [ec, img] = qed::test::open(ioc, "img.qed", o);
        BOOST_TEST_REQUIRE(!ec, ec.message());
        const std::size_t after_open = n;  // the L1 table
        std::vector<std::uint8_t> got(512);
        for (int round = 0; round < 2; ++round)
            for (std::uint64_t t = 0; t < 3; ++t) {
                BOOST_TEST_REQUIRE(!img.read(t * span, got.data(), got.size()));
                BOOST_TEST_REQUIRE(got == sector);
            }
        BOOST_TEST_REQUIRE(!img.close());
        fs.wrap = nullptr;
        return n - after_open;
    };
    BOOST_TEST(table_reads(50, 3 * table_bytes) == 3u);        // the budget holds all three
    BOOST_TEST(table_reads(50, 3 * table_bytes - 1) == 6u);    // two fit: every lookup of the cycle misses
    BOOST_TEST(table_reads(2, std::size_t{32} << 20) == 6u);   // the entry cap still applies
    BOOST_TEST(table_reads(50, 0) == 6u);                      // a budget below one table still keeps one
    BOOST_TEST(table_reads(50, std::size_t{32} << 20) == 3u);  // the defaults: 32 MiB
}

BOOST_AUTO_TEST_SUITE_END()
