// SPDX-License-Identifier: BSL-1.0
// The table write-back alone (table/writeback.hpp), on an in-memory file
// that records every operation: which sectors a round writes, the order of
// its flushes (data before L2 entries when asked, new tables before L1, a
// final flush for durable syncs), what happens to a failed write, and that
// changes made during a round wait for the next one.
#include <boost/asio/io_context.hpp>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "support/fault_file.hpp"
#include "support/layer_cases.hpp"
#include "support/recording_file.hpp"
#include "table/writeback.hpp"

using namespace qed;
using namespace qed::detail;
namespace data = boost::unit_test::data;

namespace {

using test::succeeded;

constexpr std::uint64_t l1_offset = 4096;
constexpr std::uint32_t entries = 2048;  // 16 KiB tables: 32 sectors of 512 bytes

struct bench {
    explicit bench(std::size_t align = 512) : align(align) {
        storage->resize(1 << 20);
        auto mem = make_memory_file(ioc.get_executor(), storage);
        auto faulty = std::make_shared<test::fault_file>(mem, faults);
        file = std::make_shared<test::recording_file>(faulty, log, "image");
        wb.attach({file.get(), align, &l1, l1_offset, [this] { return flush_first; }, [this] { ++flushed_calls; }, {}});
    }
    l2_ref table_at(std::uint64_t offset) {
        auto t = std::make_shared<l2_entry>(offset, entries);
        t->loaded = true;
        return t;
    }
    std::optional<std::error_code> sync(bool durable) {
        std::optional<std::error_code> result;
        wb.sync(durable, [&](boost::system::error_code ec) { result = ec; });
        ioc.restart();
        ioc.run();
        return result;
    }
    std::uint64_t on_disk(std::uint64_t offset) const {
        std::uint64_t v = 0;
        storage->read(offset, {reinterpret_cast<std::byte*>(&v), sizeof v});
        return v;  // (little-endian host: the tests run on x86-64 and arm64)
    }
    /// The log as letters: W<offset>/<length>, F (flush).
    std::string ops() const {
        std::string s;
        for (const auto& r : *log) {
            if (r.what == test::io_record::write)
                s += "W" + std::to_string(r.offset) + "/" + std::to_string(r.length) + " ";
            else if (r.what == test::io_record::flush)
                s += "F ";
        }
        return s;
    }

    std::size_t align;
    boost::asio::io_context ioc;
    std::shared_ptr<memory_storage> storage = std::make_shared<memory_storage>();
    std::shared_ptr<test::io_log> log = std::make_shared<test::io_log>();
    std::shared_ptr<test::fault_plan> faults = std::make_shared<test::fault_plan>();
    std::shared_ptr<block_file> file;
    table l1{entries};
    table_writeback wb{ioc.get_executor()};
    bool flush_first = false;
    int flushed_calls = 0;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(writeback)

// Only the sectors holding changed entries are written, neighbouring ones
// merged; then the new tables are flushed before L1 points at them, and a
// durable sync ends with a flush.
BOOST_DATA_TEST_CASE(dirty_sectors_in_qed_order, data::make({512, 4096}), align) {
    bench b(align);
    const std::uint64_t t1 = 64 * 1024, t2 = 128 * 1024;
    auto a = b.table_at(t1), c = b.table_at(t2);
    a->t[0] = 0x100000;
    a->t[1] = 0x110000;
    const std::uint32_t far = static_cast<std::uint32_t>(align / 8) * 3;  // in the fourth block
    a->t[far] = 0x120000;
    c->t[entries - 1] = 0x130000;
    b.wb.mark(a, 0, 2);
    b.wb.mark(a, far, 1);
    b.wb.mark(c, entries - 1, 1);
    b.l1[1] = t1;
    b.l1[2] = t2;
    b.wb.mark_l1(1, 2);
    BOOST_TEST(b.wb.dirty());
    BOOST_TEST(succeeded(b.sync(true)));
    BOOST_TEST(!b.wb.dirty());
    const std::string al = std::to_string(align);
    const std::string expect = "W" + std::to_string(t1) + "/" + al + " W" + std::to_string(t1 + 3 * align) + "/" + al +
                               " W" + std::to_string(t2 + entries * 8 - align) + "/" + al + " F W" +
                               std::to_string(l1_offset) + "/" + al + " F ";
    BOOST_TEST(b.ops() == expect);
    BOOST_TEST(b.on_disk(t1 + 8) == 0x110000u);
    BOOST_TEST(b.on_disk(t1 + far * 8) == 0x120000u);
    BOOST_TEST(b.on_disk(t2 + (entries - 1) * 8) == 0x130000u);
    BOOST_TEST(b.on_disk(l1_offset + 16) == t2);
}

// With a backing file (or NEED_CHECK just set) the data must be durable
// before any L2 entry that points at it: the round flushes first.
BOOST_AUTO_TEST_CASE(flush_before_l2_when_asked) {
    bench b;
    b.flush_first = true;
    auto a = b.table_at(64 * 1024);
    a->t[3] = 0x200000;
    b.wb.mark(a, 3, 1);
    BOOST_TEST(succeeded(b.sync(false)));
    BOOST_TEST(b.ops() == "F W65536/512 ");
    BOOST_TEST(b.flushed_calls == 1);
}

// A write that fails fails the round's waiters; its sectors stay dirty and
// the next sync writes them.
BOOST_AUTO_TEST_CASE(failed_write_is_retried) {
    bench b;
    auto a = b.table_at(64 * 1024);
    a->t[0] = 0x300000;
    b.wb.mark(a, 0, 1);
    b.faults->fail_at[test::fault_plan::write] = 0;
    const auto first = b.sync(false);
    BOOST_REQUIRE(first.has_value());
    BOOST_TEST(*first == std::make_error_code(std::errc::io_error));
    BOOST_TEST(b.wb.dirty());
    BOOST_TEST(b.on_disk(64 * 1024) == 0u);
    BOOST_TEST(succeeded(b.sync(false)));
    BOOST_TEST(!b.wb.dirty());
    BOOST_TEST(b.on_disk(64 * 1024) == 0x300000u);
}

// A round copies the sectors when it starts: an entry changed while it
// runs is written by the next round, whose flush covers its data.
BOOST_AUTO_TEST_CASE(changes_during_a_round_go_to_the_next) {
    bench b;
    auto a = b.table_at(64 * 1024);
    a->t[0] = 0x400000;
    b.wb.mark(a, 0, 1);
    std::optional<std::error_code> first, second;
    b.wb.sync(false, [&](boost::system::error_code ec) { first = ec; });
    // The round has taken its copy; this change is not in it.
    a->t[0] = 0x410000;
    b.wb.mark(a, 0, 1);
    b.wb.sync(false, [&](boost::system::error_code ec) { second = ec; });
    b.ioc.run();
    BOOST_TEST(succeeded(first));
    BOOST_TEST(succeeded(second));
    BOOST_TEST(b.ops() == "W65536/512 W65536/512 ");
    BOOST_TEST(b.on_disk(64 * 1024) == 0x410000u);
}

// discard() forgets every pending update (the tables were unlinked).
BOOST_AUTO_TEST_CASE(discard_forgets) {
    bench b;
    auto a = b.table_at(64 * 1024);
    a->t[0] = 0x500000;
    b.wb.mark(a, 0, 1);
    b.wb.mark_l1(0, 1);
    b.wb.discard();
    BOOST_TEST(!b.wb.dirty());
    BOOST_TEST(a->dirty_bits.empty());
    BOOST_TEST(succeeded(b.sync(false)));
    BOOST_TEST(b.ops() == "");
}

BOOST_AUTO_TEST_SUITE_END()
