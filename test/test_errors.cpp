// SPDX-License-Identifier: BSL-1.0
// Error paths: the file fails the n-th read, write, flush or resize, for
// every n a workload reaches (so every step of the state machine fails once:
// header dirty write, prefill reads, data writes, flush before L2, L2 and L1
// writes, new tables, reads, flush, close). Then:
//   - the request hit completes with that error, none hangs (watchdog);
//   - requests after the fault still work and read back correctly;
//   - the image reopens (repaired if dirty) with no corruption;
//   - every write that reported success reads back its data, every failed
//     write leaves each sector with its old or its new contents.
#include <algorithm>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <cerrno>

#include "qed/image.hpp"
#include "support/fault_file.hpp"
#include "support/memory_fs.hpp"
#include "support/model.hpp"
#include "support/sync.hpp"

namespace bdata = boost::unit_test::data;
using namespace qed;
using namespace qed::test;

namespace {

constexpr std::uint32_t cs = 4096;
constexpr std::uint64_t span = 2 * 1024 * 1024;  // one L2 table (4K clusters, table_size 1)
constexpr std::uint64_t image_size = 8 * span;
constexpr std::uint64_t backing_tag = 3;

struct op {
    enum kind { write, zeroes, read } what;
    std::uint64_t off, len, tag;
    std::vector<std::uint8_t> buf;
    std::error_code ec;
    bool done = false;
};

// A fixed workload touching every path: new L2 tables, partial clusters,
// in-place overwrites, zero clusters, reads of data, holes and backing.
std::vector<op> workload(std::uint64_t first_tag) {
    std::vector<op> ops;
    std::uint64_t tag = first_tag;
    auto w = [&](std::uint64_t off, std::uint64_t len) { ops.push_back({op::write, off, len, tag++, {}, {}, false}); };
    auto z = [&](std::uint64_t off, std::uint64_t len) { ops.push_back({op::zeroes, off, len, 0, {}, {}, false}); };
    auto r = [&](std::uint64_t off, std::uint64_t len) { ops.push_back({op::read, off, len, 0, {}, {}, false}); };
    w(0, 512);                 // partial first cluster: prefill/postfill
    w(cs + 1024, 2 * cs);      // crosses clusters, unaligned both ends
    w(span - cs, 2 * cs);      // crosses into a new L2 table
    w(3 * span + 5 * cs, cs);  // another new table
    z(4 * span, 4 * cs);       // zero clusters, new table
    z(16 * cs + 512, 1024);    // partial write-zeroes
    r(0, 8 * cs);
    r(6 * span, 2 * cs);  // hole
    w(40 * cs, 8 * cs);   // a run of clusters
    r(span - 2 * cs, 4 * cs);
    return ops;
}

struct fixture {
    boost::asio::io_context ioc;
    memory_fs fs{ioc.get_executor()};
    std::shared_ptr<fault_plan> plan = std::make_shared<fault_plan>();
    model m{image_size};
    bool backing;

    explicit fixture(bool with_backing) : backing(with_backing) {
        create_options co;
        co.size = image_size;
        co.cluster_size = cs;
        co.table_size = 1;
        co.opener = fs.opener();
        if (backing) {
            auto& st = fs.storage("base.raw");
            std::vector<std::uint8_t> sec(512);
            for (std::uint64_t off = 0; off < 5 * span; off += 512) {  // shorter than the image
                fill_sector(sec.data(), backing_tag, off / 512);
                st->write(off, {reinterpret_cast<std::byte*>(sec.data()), 512});
                m.set(off, 512, backing_tag);
            }
            co.backing_file = "base.raw";
            co.backing_format = image_format::raw;
        }
        BOOST_REQUIRE(!create(ioc, "img.qed", co));
        fs.wrap = [this](std::shared_ptr<block_file> f, const std::string&) -> std::shared_ptr<block_file> {
            return std::make_shared<fault_file>(std::move(f), plan);
        };
    }

    open_options options() {
        open_options o;
        o.opener = fs.opener();
        o.need_check_timeout = std::chrono::milliseconds(1);  // the timer's flush + header write fail too
        return o;
    }

    // Issue all ops at once; run until all complete (or report a hang).
    void run(image& img, std::vector<op>& ops) {
        std::size_t completed = 0;
        for (auto& o : ops) {
            o.buf.resize(o.len);
            if (o.what == op::write)
                for (std::uint64_t s = 0; s < o.len / 512; ++s) fill_sector(&o.buf[s * 512], o.tag, o.off / 512 + s);
            auto done = [&o, &completed](std::error_code ec, auto&&...) {
                o.ec = ec;
                o.done = true;
                ++completed;
            };
            if (o.what == op::write)
                img.async_write_at(o.off, boost::asio::buffer(o.buf), done);
            else if (o.what == op::read)
                img.async_read_at(o.off, boost::asio::buffer(o.buf), done);
            else
                img.async_write_zeroes(o.off, o.len, done);
        }
        BOOST_REQUIRE_MESSAGE(run_until(
                                  ioc, [&] { return completed == ops.size(); }, std::chrono::seconds(20)),
                              "hang: " << ops.size() - completed << " requests never completed");
    }

    // Successful writes are exact; failed ones leave old or new per sector.
    void check_contents(sync_image& img, const std::vector<op>& ops) {
        for (const auto& o : ops) {
            if (o.what == op::read) continue;
            std::vector<std::uint8_t> got(o.len);
            const std::error_code rec = img.read(o.off, got.data(), o.len);
            BOOST_REQUIRE_MESSAGE(!rec, "reading back " << o.off << "+" << o.len << ": " << rec.message());
            for (std::uint64_t s = 0; s < o.len / 512; ++s) {
                const std::uint64_t sector = o.off / 512 + s;
                std::vector<std::uint64_t> ok{o.tag};
                if (o.ec) ok.push_back(m.tag(sector));
                if (model::match(&got[s * 512], sector, ok) < 0)  // (describe() is slow: only on failure)
                    BOOST_FAIL("sector " << sector << " after " << (o.ec ? "failed" : "successful")
                                         << " write holds neither old nor new data but "
                                         << model::describe(&got[s * 512], sector, 1200) << "; expected tag " << o.tag
                                         << " or " << m.tag(sector));
            }
        }
    }
    void apply(const std::vector<op>& ops, sync_image& img) {
        // Settle failed writes to whatever they left (old or new, per sector).
        for (const auto& o : ops) {
            if (o.what == op::read) continue;
            if (!o.ec) {
                m.set(o.off, o.len, o.tag);
                continue;
            }
            std::vector<std::uint8_t> got(o.len);
            BOOST_REQUIRE(!img.read(o.off, got.data(), o.len));
            for (std::uint64_t s = 0; s < o.len / 512; ++s) {
                const std::uint64_t sector = o.off / 512 + s;
                if (model::match(&got[s * 512], sector, {o.tag}) == 0) m.set(sector * 512, 512, o.tag);
            }
        }
    }
};

struct fault_case {
    fault_plan::kind kind;
    bool backing;
};
std::ostream& operator<<(std::ostream& os, const fault_case& c) {
    return os << fault_plan::name(c.kind) << (c.backing ? " with backing" : "");
}

// How many operations of each kind the whole scenario performs without faults.
std::array<long, 4> count_ops(bool backing) {
    fixture f(backing);
    auto [ec, img] = open(f.ioc, "img.qed", f.options());
    BOOST_REQUIRE(!ec);
    auto ops = workload(100);
    f.run(img.img, ops);
    BOOST_REQUIRE(!img.flush());
    BOOST_REQUIRE(!img.close());
    return f.plan->count;
}

const fault_case cases[] = {{fault_plan::read, false},   {fault_plan::write, false}, {fault_plan::flush, false},
                            {fault_plan::resize, false}, {fault_plan::read, true},   {fault_plan::write, true},
                            {fault_plan::flush, true},   {fault_plan::resize, true}};

}  // namespace

BOOST_DATA_TEST_CASE(every_io_fails_once, bdata::make(cases), c) {
    const auto totals = count_ops(c.backing);
    const long total = totals[c.kind];
    BOOST_TEST_MESSAGE(fault_plan::name(c.kind) << ": " << total << " operations in the scenario");
    long failed_points = 0;
    // Each fault point twice per error: once the disk recovers right after the
    // workload (later requests on the same image must work), once it stays
    // armed through close (close must fail cleanly, the image reopen).
    // Each with EIO (a failing disk) and ENOSPC (a full one).
    const std::error_code errors[] = {std::make_error_code(std::errc::io_error),
                                      std::make_error_code(std::errc::no_space_on_device)};
    for (long n = 0; n <= total; ++n) {
        for (int variant = 0; variant < 4; ++variant) {
            const bool through_close = variant & 1;
            const std::error_code injected = errors[variant >> 1];
            BOOST_TEST_CONTEXT("failing " << fault_plan::name(c.kind) << " #" << n << " with " << injected.message()
                                          << (through_close ? " (armed through close)" : "")) {
                fixture f(c.backing);
                f.plan->error = injected;
                f.plan->fail_at[c.kind] = n;
                auto [oec, img] = open(f.ioc, "img.qed", f.options());
                if (oec) {
                    // The fault hit the open itself: a clean error, then open works.
                    BOOST_CHECK(oec == f.plan->error);
                    BOOST_CHECK_EQUAL(f.plan->failures, 1);
                    ++failed_points;
                    f.plan->fail_at = {-1, -1, -1, -1};
                    auto [again, img2] = open(f.ioc, "img.qed", f.options());
                    BOOST_REQUIRE_MESSAGE(!again, again.message());
                    BOOST_REQUIRE(!img2.close());
                    continue;
                }
                auto ops = workload(100);
                f.run(img.img, ops);
                const std::error_code flush_ec = img.flush();
                std::error_code close_ec;
                if (through_close) close_ec = img.close();
                const long fired = f.plan->failures;
                f.plan->fail_at = {-1, -1, -1, -1};  // the disk recovers
                if (fired) ++failed_points;
                // Only the injected error may appear, and only if a fault fired.
                for (const auto& o : ops) BOOST_CHECK(!o.ec || (fired && o.ec == f.plan->error));
                if (flush_ec || close_ec) BOOST_CHECK(fired);

                if (!through_close) {
                    f.check_contents(img, ops);
                    f.apply(ops, img);
                    // Later requests work on the same image.
                    auto more = workload(1000);
                    for (auto& o : more) o.off = (o.off + 5 * span / 2) % (image_size - o.len) / 512 * 512;
                    f.run(img.img, more);
                    for (const auto& o : more)
                        BOOST_REQUIRE_MESSAGE(!o.ec, "request after the fault failed: " << o.ec.message());
                    f.check_contents(img, more);
                    f.apply(more, img);
                    BOOST_REQUIRE(!img.close());
                }

                // Reopen: repaired if dirty, no corruption, contents intact.
                auto [rec, re] = open(f.ioc, "img.qed", f.options());
                BOOST_REQUIRE_MESSAGE(!rec, "reopen: " << rec.message());
                auto [cec, r] = re.check();
                BOOST_REQUIRE(!cec);
                BOOST_CHECK_EQUAL(r.corruptions, 0u);
                f.check_contents(re, ops);
                BOOST_REQUIRE(!re.close());
            }
        }
    }
    BOOST_TEST_MESSAGE(
        fault_plan::name(c.kind)
        << ": " << failed_points
        << " faults injected (each point with EIO and ENOSPC, with and without the fault armed through close)");
    if (total > 0) BOOST_CHECK(failed_points > 0);
}

// The workload above never resizes the file; make_empty does (it cuts the
// file back after clearing the L1 table). A failing or full disk there: the
// error comes back, the image reads as empty (the L1 table was cleared and
// flushed first), keeps working, and what is left behind is only leaked
// space past the end, which check counts and repairs.
BOOST_DATA_TEST_CASE(make_empty_survives_a_failed_resize, bdata::make({false, true}) * bdata::make({0, 1}),
                     with_backing, which) {
    const std::error_code injected =
        which ? std::make_error_code(std::errc::no_space_on_device) : std::make_error_code(std::errc::io_error);
    fixture f(with_backing);
    auto [oec, img] = open(f.ioc, "img.qed", f.options());
    BOOST_REQUIRE(!oec);
    auto ops = workload(100);
    f.run(img.img, ops);
    for (const auto& o : ops) BOOST_REQUIRE_MESSAGE(!o.ec, o.ec.message());
    BOOST_REQUIRE(!img.flush());

    f.plan->error = injected;
    f.plan->fail_at[fault_plan::resize] = f.plan->count[fault_plan::resize];
    auto [mec] = await<std::error_code>(f.ioc, [&](auto h) { img.img.async_make_empty(std::move(h)); });
    BOOST_CHECK_EQUAL(f.plan->failures, 1);
    BOOST_CHECK_MESSAGE(mec == injected, "make_empty returned " << mec.message());
    f.plan->fail_at = {-1, -1, -1, -1};  // the disk recovers

    // Empty: every sector reads what the backing file (or nothing) gives.
    auto expect_empty = [&](sync_image& im) {
        std::vector<std::uint8_t> got(span);
        for (std::uint64_t off = 0; off < image_size; off += span) {
            BOOST_REQUIRE(!im.read(off, got.data(), got.size()));
            for (std::uint64_t s = 0; s < span / 512; ++s) {
                const std::uint64_t sector = off / 512 + s;
                const std::uint64_t want = with_backing && sector * 512 < 5 * span ? backing_tag : 0;
                if (model::match(&got[s * 512], sector, {want}) < 0)
                    BOOST_FAIL("sector " << sector << " after the failed make_empty: "
                                         << model::describe(&got[s * 512], sector, 1200));
            }
        }
    };
    expect_empty(img);
    // Still usable: new writes land and read back.
    model fresh{image_size};
    if (with_backing) fresh.set(0, 5 * span, backing_tag);
    f.m = fresh;
    auto more = workload(1000);
    f.run(img.img, more);
    for (const auto& o : more) BOOST_REQUIRE_MESSAGE(!o.ec, "request after the fault: " << o.ec.message());
    f.check_contents(img, more);
    BOOST_REQUIRE(!img.close());

    auto [rec, re] = open(f.ioc, "img.qed", f.options());
    BOOST_REQUIRE_MESSAGE(!rec, rec.message());
    auto [cec, r] = re.check(check_options::repair::all);
    BOOST_REQUIRE(!cec);
    BOOST_CHECK_EQUAL(r.corruptions, 0u);
    BOOST_CHECK_EQUAL(r.leaks, 0u);  // remaining after the repair
    f.check_contents(re, more);
    BOOST_REQUIRE(!re.close());
}

BOOST_AUTO_TEST_CASE(a_dead_disk_fails_everything_cleanly) {
    fixture f(false);
    auto [oec, img] = open(f.ioc, "img.qed", f.options());
    BOOST_REQUIRE(!oec);
    f.plan->persistent = true;
    f.plan->fail_at = {0, 0, 0, 0};
    f.plan->count = {0, 0, 0, 0};
    auto ops = workload(100);
    f.run(img.img, ops);
    for (const auto& o : ops) {
        // Reads of holes need no I/O; everything else fails with the disk's error.
        if (o.what != op::read) BOOST_CHECK(o.ec == f.plan->error);
    }
    BOOST_CHECK(img.flush() == f.plan->error);
    BOOST_CHECK(img.close() == f.plan->error);
    // The disk comes back: the image opens and has nothing half-written.
    f.plan->persistent = false;
    f.plan->fail_at = {-1, -1, -1, -1};
    auto [rec, re] = open(f.ioc, "img.qed", f.options());
    BOOST_REQUIRE(!rec);
    auto [cec, r] = re.check();
    BOOST_CHECK_EQUAL(r.corruptions, 0u);
    std::vector<std::uint8_t> zero(8 * cs, 0), got(8 * cs);
    BOOST_REQUIRE(!re.read(0, got.data(), got.size()));
    BOOST_CHECK(got == zero);
    BOOST_REQUIRE(!re.close());
}

// Discard: the hole punch fails (EIO or ENOSPC). The request reports the
// error, the clusters it had not punched keep their data, the ones punched
// before the failure read zeros, and the image stays consistent: discard
// changes no metadata, so there is nothing to repair.
BOOST_DATA_TEST_CASE(a_failed_punch_fails_the_discard_and_changes_nothing_else, bdata::make({EIO, ENOSPC}), err) {
    fixture f(false);
    auto [oec, img] = open(f.ioc, "img.qed", f.options());
    BOOST_REQUIRE(!oec);
    // Data in two L2 tables: one punch per table's run.
    const std::uint64_t a = span - 8 * cs, n = 16 * cs;
    std::vector<std::uint8_t> data(n);
    for (std::uint64_t s = 0; s < n / 512; ++s) fill_sector(&data[s * 512], 77, a / 512 + s);
    BOOST_REQUIRE(!img.write(a, data.data(), n));
    BOOST_REQUIRE(!img.flush());
    f.plan->error = std::error_code(err, std::generic_category());

    // The first punch fails: nothing is discarded.
    f.plan->fail_at[fault_plan::write] = f.plan->count[fault_plan::write];
    BOOST_CHECK(img.discard(a, n) == f.plan->error);
    std::vector<std::uint8_t> got(n);
    BOOST_REQUIRE(!img.read(a, got.data(), n));
    BOOST_CHECK(got == data);

    // The second punch fails (the range spans two tables, so there are at
    // least two): the clusters before it read zeros, the rest are intact.
    f.plan->fail_at[fault_plan::write] = f.plan->count[fault_plan::write] + 1;
    BOOST_CHECK(img.discard(a, n) == f.plan->error);
    BOOST_REQUIRE(!img.read(a, got.data(), n));
    std::uint64_t zeroed = 0;
    while (zeroed < n &&
           std::all_of(got.begin() + zeroed, got.begin() + zeroed + cs, [](std::uint8_t b) { return b == 0; }))
        zeroed += cs;
    BOOST_CHECK(zeroed > 0);
    BOOST_CHECK(zeroed < n);
    BOOST_CHECK(std::equal(got.begin() + zeroed, got.end(), data.begin() + zeroed));

    // The disk is fine again: the discard completes, the image is clean.
    BOOST_CHECK(!img.discard(a, n));
    BOOST_REQUIRE(!img.read(a, got.data(), n));
    BOOST_CHECK(std::all_of(got.begin(), got.end(), [](std::uint8_t b) { return b == 0; }));
    BOOST_REQUIRE(!img.close());
    auto [rec, re] = open(f.ioc, "img.qed", f.options());
    BOOST_REQUIRE_MESSAGE(!rec, rec.message());
    auto [cec, r] = re.check();
    BOOST_REQUIRE(!cec);
    BOOST_CHECK_EQUAL(r.corruptions, 0u);
    BOOST_CHECK_EQUAL(r.leaks, 0u);
    BOOST_REQUIRE(!re.close());
}
