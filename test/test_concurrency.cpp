// SPDX-License-Identifier: BSL-1.0
// Hundreds of requests in flight against a reference model: overlapping
// allocating writes to the same and neighbouring clusters, reads racing
// allocations, writes and zeroes crossing L2-table boundaries, with and
// without a backing file, across cluster sizes and table sizes. A chaos
// file runs the I/Os in flight in random order so requests really race.
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <map>
#include <memory>

#include "qed/image.hpp"
#include "support/chaos_file.hpp"
#include "support/memory_fs.hpp"
#include "support/model.hpp"
#include "support/sync.hpp"

namespace bdata = boost::unit_test::data;
using namespace qed;
using namespace qed::test;

namespace {

struct layout {
    std::uint32_t cluster_size;
    std::uint32_t table_size;
};
std::ostream& operator<<(std::ostream& os, const layout& l) {
    return os << "cluster " << l.cluster_size << " table " << l.table_size;
}
const layout layouts[] = {{4096, 1}, {4096, 4}, {4096, 16}, {65536, 1}, {65536, 4}, {65536, 16}};

constexpr std::uint64_t backing_tag = 7;

struct harness {
    boost::asio::io_context ioc;
    memory_fs fs{ioc.get_executor()};
    layout geo;
    std::uint64_t span;  // guest bytes per L2 table
    std::uint64_t size;
    std::uint64_t backing_size = 0;
    std::mt19937_64 rng;
    model m;
    sync_image img{ioc, {}};
    std::uint64_t next_tag = 100;

    harness(layout g, bool with_backing, unsigned seed)
        : geo(g),
          span(std::uint64_t{g.cluster_size} * g.cluster_size * g.table_size / 8),
          size(3 * span),
          rng(seed),
          m(size) {
        create_options co;
        co.size = size;
        co.cluster_size = g.cluster_size;
        co.table_size = g.table_size;
        co.opener = fs.opener();
        if (with_backing) {
            // A raw backing file ending inside the busy zone around the first
            // L2 boundary, so reads and prefills cross its end.
            backing_size = span + 300 * 1024;
            auto& st = fs.storage("base.raw");
            std::vector<std::uint8_t> sec(512);
            for (std::uint64_t zone_start : {std::uint64_t{0}, span - 2 * 1024 * 1024}) {
                for (std::uint64_t off = zone_start; off < std::min(backing_size, zone_start + 4 * 1024 * 1024);
                     off += 512) {
                    fill_sector(sec.data(), backing_tag, off / 512);
                    st->write(off, {reinterpret_cast<std::byte*>(sec.data()), 512});
                    m.set(off, 512, backing_tag);
                }
            }
            st->resize(backing_size);
            co.backing_file = "base.raw";
            co.backing_format = image_format::raw;
        }
        BOOST_REQUIRE(!create(ioc, "top.qed", co));
        fs.wrap = [seed](std::shared_ptr<block_file> f, const std::string&) -> std::shared_ptr<block_file> {
            return std::make_shared<chaos_file>(std::move(f), seed);
        };
        reopen();
    }

    void reopen() {
        open_options oo;
        oo.opener = fs.opener();
        oo.l2_cache_size = 4;  // small: evictions while requests hold tables
        auto [ec, i] = open(ioc, "top.qed", oo);
        BOOST_REQUIRE_MESSAGE(!ec, "open: " << ec.message());
        img.img = std::move(i.img);
    }

    // Offsets cluster around the start of the image and the L2 boundaries.
    std::uint64_t pick_offset(std::uint64_t len) {
        const std::uint64_t zones[] = {0, span - 512 * 1024, 2 * span - 256 * 1024};
        const std::uint64_t zone = zones[rng() % 3];
        const std::uint64_t width = 1024 * 1024;
        std::uint64_t off = zone + (rng() % (width / 512)) * 512;
        if (rng() % 4 == 0) off = off / geo.cluster_size * geo.cluster_size;  // cluster aligned
        return std::min(off, size - len);
    }
    std::uint64_t pick_length() {
        switch (rng() % 4) {
            case 0:
                return 512 * (1 + rng() % 8);
            case 1:
                return std::uint64_t{geo.cluster_size};
            case 2:
                return 512 * (1 + rng() % (3 * geo.cluster_size / 512));
            default:
                return 4096;
        }
    }
};

struct request {
    enum kind { read, write, zeroes, flush } what;
    std::uint64_t off = 0, len = 0, tag = 0;
    bool may_unmap = true;
    std::vector<std::uint8_t> buf;
    std::error_code ec;
    bool done = false;
};

// Issue every request at once, run until all complete, check results.
// `overlap` lets writes in the wave overlap each other.
void run_wave(harness& h, std::size_t n, bool overlap) {
    std::vector<std::unique_ptr<request>> reqs;
    std::map<std::uint64_t, std::vector<std::uint64_t>> racing;  // sector -> tags written in this wave
    std::vector<bool> busy(h.m.sectors(), false);
    for (std::size_t i = 0; i < n; ++i) {
        auto r = std::make_unique<request>();
        const unsigned k = h.rng() % 20;
        r->what = k < 10 ? request::write : k < 16 ? request::read : k < 19 ? request::zeroes : request::flush;
        r->len = h.pick_length();
        r->off = h.pick_offset(r->len);
        if (r->what == request::write || r->what == request::zeroes) {
            bool clash = false;
            for (std::uint64_t s = r->off / 512; s < (r->off + r->len) / 512; ++s) clash |= busy[s];
            if (clash && !overlap) r->what = request::read;
        }
        if (r->what == request::write || r->what == request::zeroes) {
            r->tag = r->what == request::write ? h.next_tag++ : 0;
            r->may_unmap = h.rng() % 2;
            for (std::uint64_t s = r->off / 512; s < (r->off + r->len) / 512; ++s) {
                busy[s] = true;
                racing[s].push_back(r->tag);
            }
        }
        if (r->what == request::write) {
            r->buf.resize(r->len);
            for (std::uint64_t s = 0; s < r->len / 512; ++s) fill_sector(&r->buf[s * 512], r->tag, r->off / 512 + s);
        } else if (r->what == request::read) {
            r->buf.resize(r->len);
        }
        reqs.push_back(std::move(r));
    }
    std::size_t completed = 0;
    for (auto& rp : reqs) {
        request* r = rp.get();
        auto done = [r, &completed](std::error_code ec, auto&&...) {
            r->ec = ec;
            r->done = true;
            ++completed;
        };
        switch (r->what) {
            case request::write:
                h.img.img.async_write_at(r->off, boost::asio::buffer(r->buf), done);
                break;
            case request::read:
                h.img.img.async_read_at(r->off, boost::asio::buffer(r->buf), done);
                break;
            case request::zeroes:
                h.img.img.async_write_zeroes(r->off, r->len, zero_options{r->may_unmap, false}, done);
                break;
            case request::flush:
                h.img.img.async_flush(done);
                break;
        }
    }
    BOOST_REQUIRE_MESSAGE(run_until(h.ioc, [&] { return completed == reqs.size(); }),
                          "hang: " << reqs.size() - completed << " requests never completed");
    if (const char* dbg = std::getenv("QED_DEBUG_SECTOR")) {
        const std::uint64_t ds = std::strtoull(dbg, nullptr, 0);
        for (auto& r : reqs)
            if (r->off / 512 <= ds && ds < (r->off + r->len) / 512 && r->what != request::flush)
                BOOST_TEST_MESSAGE("  req kind " << r->what << " " << r->off << "+" << r->len << " tag " << r->tag
                                                 << " unmap " << r->may_unmap);
    }
    for (auto& r : reqs) {
        BOOST_REQUIRE_MESSAGE(!r->ec, "request at " << r->off << "+" << r->len << ": " << r->ec.message());
        if (r->what != request::read) continue;
        for (std::uint64_t s = 0; s < r->len / 512; ++s) {
            const std::uint64_t sector = r->off / 512 + s;
            std::vector<std::uint64_t> ok{h.m.tag(sector)};
            if (auto it = racing.find(sector); it != racing.end())
                ok.insert(ok.end(), it->second.begin(), it->second.end());
            if (model::match(&r->buf[s * 512], sector, ok) < 0) {
                std::string found = "unknown";
                std::uint8_t probe[512];
                for (std::uint64_t t = 0; t < h.next_tag && found == "unknown"; ++t)
                    for (std::int64_t d = -512; d <= 512; ++d) {
                        if (std::int64_t(sector) + d < 0) continue;
                        fill_sector(probe, t, sector + d);
                        if (!std::memcmp(probe, &r->buf[s * 512], 512)) {
                            found = "tag " + std::to_string(t) + " of sector " + std::to_string(sector + d);
                            break;
                        }
                    }
                std::string cands;
                for (auto t : ok) cands += std::to_string(t) + " ";
                BOOST_FAIL("read " << r->off << "+" << r->len << " at sector " << sector
                                   << " returned data nobody wrote there: " << found << "; expected one of " << cands);
            }
        }
    }
    // Settle the model: a sector written once in the wave holds that write;
    // one written by overlapping requests holds one of them (read it back).
    for (auto& [sector, tags] : racing) {
        if (tags.size() == 1) {
            h.m.set(sector * 512, 512, tags[0]);
            continue;
        }
        std::vector<std::uint8_t> sec(512);
        BOOST_REQUIRE(!h.img.read(sector * 512, sec.data(), 512));
        const int which = model::match(sec.data(), sector, tags);
        BOOST_REQUIRE_MESSAGE(which >= 0, "sector " << sector << " holds none of the overlapping writes");
        h.m.set(sector * 512, 512, tags[static_cast<std::size_t>(which)]);
    }
}

void verify_all(harness& h) {
    const std::uint64_t zones[] = {0, h.span - 512 * 1024, 2 * h.span - 256 * 1024};
    std::vector<std::uint8_t> got(1024 * 1024 + 64 * 1024 * 3), want(got.size());
    for (std::uint64_t z : zones) {
        const std::uint64_t len = std::min<std::uint64_t>(got.size(), h.size - z);
        BOOST_REQUIRE(!h.img.read(z, got.data(), len));
        h.m.expected(z, len, want.data());
        for (std::uint64_t i = 0; i < len; i += 512) {
            if (std::memcmp(&got[i], &want[i], 512) != 0) {
                std::string found = "unknown";
                std::uint8_t probe[512];
                const std::uint64_t sector = (z + i) / 512;
                for (std::uint64_t t = 0; t < h.next_tag && found == "unknown"; ++t)
                    for (std::int64_t d = -4096; d <= 4096; ++d) {
                        if (std::int64_t(sector) + d < 0) continue;
                        fill_sector(probe, t, sector + d);
                        if (!std::memcmp(probe, &got[i], 512)) {
                            found = "tag " + std::to_string(t) + " of sector " + std::to_string(sector + d);
                            break;
                        }
                    }
                BOOST_FAIL("mismatch at guest offset " << z + i << ": found " << found << ", model tag "
                                                       << h.m.tag(sector));
            }
        }
    }
}

}  // namespace

BOOST_DATA_TEST_CASE(hundreds_in_flight_match_the_model, bdata::make(layouts) * bdata::make({false, true}), geo,
                     with_backing) {
    harness h(geo, with_backing, 1234 + geo.cluster_size / 4096 + geo.table_size + with_backing);
    for (int wave = 0; wave < 6; ++wave) {
        run_wave(h, 300, false);
        if (std::getenv("QED_DEBUG_VERIFY")) {
            BOOST_TEST_MESSAGE("verify after wave " << wave);
            verify_all(h);
        }
    }
    run_wave(h, 300, true);  // writes overlapping each other
    verify_all(h);
    // Whatever the image holds must survive close + reopen and check clean.
    BOOST_REQUIRE(!h.img.close());
    h.reopen();
    verify_all(h);
    auto [ec, r] = h.img.check();
    BOOST_REQUIRE(!ec);
    BOOST_CHECK_EQUAL(r.corruptions, 0u);
    BOOST_CHECK_EQUAL(r.leaks, 0u);
    BOOST_REQUIRE(!h.img.close());
}

BOOST_DATA_TEST_CASE(a_request_spanning_l2_tables, bdata::make(layouts), geo) {
    harness h(geo, false, 99);
    // One write across the first L2 boundary, unaligned at both ends.
    const std::uint64_t off = h.span - 3 * geo.cluster_size + 1024;
    const std::uint64_t len = 6 * geo.cluster_size - 2048;
    std::vector<std::uint8_t> buf(len), back(len);
    for (std::uint64_t s = 0; s < len / 512; ++s) fill_sector(&buf[s * 512], 42, off / 512 + s);
    BOOST_REQUIRE(!h.img.write(off, buf.data(), len));
    h.m.set(off, len, 42);
    BOOST_REQUIRE(!h.img.read(off, back.data(), len));
    BOOST_CHECK(buf == back);
    verify_all(h);
    BOOST_REQUIRE(!h.img.close());
}
