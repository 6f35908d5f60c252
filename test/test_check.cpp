// SPDX-License-Identifier: BSL-1.0
// Consistency check and repair: the counts it reports, leaks (trailing ones
// cut off, interior ones only counted), corruptions (invalid L1/L2 offsets
// cleared by repair=all, double references left alone), NEED_CHECK on open,
// check running between requests, and the need-check bit's life cycle: set
// before the first allocation without a backing file, never with one (a
// flush before each L2 update instead), cleared by the quiet-time timer and
// by close, and never touched after close.
#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "qed/image.hpp"
#include "support/chaos_file.hpp"
#include "support/fixed_size_file.hpp"
#include "support/image_fixture.hpp"
#include "support/recording_file.hpp"

namespace data = boost::unit_test::data;
using namespace qed;
using namespace qed::test;
using std::chrono::milliseconds;

namespace {

/// Grow a closed image's file by `n` clusters of junk nothing references.
void append_junk_clusters(mem_env& e, const std::string& name, std::uint64_t cs, unsigned n) {
    const std::uint64_t at = e.file_size(name);
    BOOST_TEST_REQUIRE(at % cs == 0u);
    e.put(name, at, pattern(at, static_cast<std::size_t>(n * cs), 99));
}

bool any_line_has(const std::vector<std::string>& lines, const std::string& a, const std::string& b) {
    return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) {
        return l.find(a) != std::string::npos && l.find(b) != std::string::npos;
    });
}

}  // namespace

// ===========================================================================
// counts
// ===========================================================================

BOOST_AUTO_TEST_SUITE(counts)

BOOST_DATA_TEST_CASE(allocated_total_fragmented_and_end, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs, fresh = l.fresh_file_size(), tb = l.table_bytes();
    e.create("img.qed", e.create_opts(10 * c + 512, l));
    auto img = e.open("img.qed");
    {
        const auto r = check_image(img);
        BOOST_TEST(r.total_clusters == 11u, "ceil((10 clusters + 512) / cluster)");
        BOOST_TEST(r.allocated_clusters == 0u);
        BOOST_TEST(r.fragmented_clusters == 0u);
        BOOST_TEST(r.leaks == 0u);
        BOOST_TEST(r.corruptions == 0u);
        BOOST_TEST(r.image_end_offset == fresh);
    }
    write_pattern(img, 0, 4 * c, 1);                  // clusters 0-3 contiguous at `fresh`, table after
    write_pattern(img, 5 * c, c, 2);                  // at fresh + 4c + tb
    write_pattern(img, 4 * c, c, 3);                  // after it: out of guest order
    BOOST_TEST_REQUIRE(!img.write_zeroes(7 * c, c));  // a zero cluster is not allocated
    const std::uint64_t end = fresh + 4 * c + tb + 2 * c;
    BOOST_TEST_REQUIRE(!img.flush());
    BOOST_TEST(e.file_size("img.qed") == end);
    const auto r = check_image(img);
    BOOST_TEST(r.total_clusters == 11u);
    BOOST_TEST(r.allocated_clusters == 6u);
    // Guest order: 0 1 2 3 contiguous; 4 is not right after 3, 5 not right after 4.
    BOOST_TEST(r.fragmented_clusters == 2u);
    BOOST_TEST(r.image_end_offset == end);
    BOOST_TEST(r.leaks == 0u);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.check_errors == 0u);
    BOOST_TEST(r.messages.empty());
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_DATA_TEST_CASE(total_clusters_is_a_ceiling, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    for (const std::uint64_t size : {std::uint64_t{0}, std::uint64_t{512}, c, c + 512, 7 * c, 7 * c - 512}) {
        e.create("img.qed", e.create_opts(size, l));
        auto img = e.open("img.qed");
        BOOST_TEST(check_image(img).total_clusters == (size + c - 1) / c, "size " << size);
        BOOST_TEST_REQUIRE(!img.close());
    }
}

BOOST_AUTO_TEST_CASE(counts_across_l2_tables_and_backing_files) {
    mem_env e;
    const layout l{4096, 1};
    const std::uint64_t span = l.span();
    e.make_raw("base.raw", 3 * span, 1);
    auto co = e.create_opts(3 * span, l);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    write_pattern(img, span - 4096, 8192, 2);    // one cluster in each of tables 0 and 1
    write_pattern(img, 2 * span + 512, 512, 3);  // table 2, partial
    const auto r = check_image(img);
    BOOST_TEST(r.allocated_clusters == 3u, "only this image's clusters");
    BOOST_TEST(r.total_clusters == 3 * span / 4096);
    BOOST_TEST(r.leaks == 0u);
    BOOST_TEST(r.image_end_offset == e.file_size("top.qed"));
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// leaks
// ===========================================================================

BOOST_AUTO_TEST_SUITE(leaks)

BOOST_DATA_TEST_CASE(trailing_leaks_are_counted_and_cut_off, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    e.create("img.qed", e.create_opts(16 * c, l));
    {
        auto img = e.open("img.qed");
        write_pattern(img, 0, 2 * c, 1);
        BOOST_TEST_REQUIRE(!img.close());
    }
    const std::uint64_t end = e.file_size("img.qed");
    append_junk_clusters(e, "img.qed", c, 3);

    auto img = e.open("img.qed");
    auto r = check_image(img);
    BOOST_TEST(r.leaks == 3u);
    BOOST_TEST(r.leaks_fixed == 0u);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.image_end_offset == end);
    BOOST_TEST(any_line_has(r.messages, "3", "leak"));
    BOOST_TEST(e.file_size("img.qed") == end + 3 * c, "a plain check must not truncate");

    r = check_image(img, check_options::repair::leaks);
    BOOST_TEST(r.leaks == 0u);
    BOOST_TEST(r.leaks_fixed == 3u);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(e.file_size("img.qed") == end, "repair must cut the leaked clusters off");
    expect_clean(img);
    expect_pattern(img, 0, 2 * c, 1, "data after the repair");

    // The next cluster goes where the leak was.
    write_pattern(img, 5 * c, c, 2);
    BOOST_TEST_REQUIRE(!img.flush());  // table updates may be written back later
    BOOST_TEST(e.l2_entry("img.qed", 5 * c) == end);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());

    // repair=all does the same.
    append_junk_clusters(e, "img.qed", c, 2);
    auto again = e.open("img.qed");
    r = check_image(again, check_options::repair::all);
    BOOST_TEST(r.leaks == 0u);
    BOOST_TEST(r.leaks_fixed == 2u);
    BOOST_TEST(e.file_size("img.qed") == end + c);
    BOOST_TEST_REQUIRE(!again.close());
}

BOOST_DATA_TEST_CASE(interior_leaks_remain_counted, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs, fresh = l.fresh_file_size();
    e.create("img.qed", e.create_opts(16 * c, l));
    {
        auto img = e.open("img.qed");
        write_pattern(img, 0, 3 * c, 1);  // clusters at fresh, fresh + c, fresh + 2c
        BOOST_TEST_REQUIRE(!img.close());
    }
    const std::uint64_t end = e.file_size("img.qed");
    BOOST_TEST_REQUIRE(e.l2_entry("img.qed", c) == fresh + c);
    e.set_u64("img.qed", e.l2_entry_pos("img.qed", c), 0);  // fresh + c: referenced by nothing
    append_junk_clusters(e, "img.qed", c, 2);

    auto img = e.open("img.qed");
    auto r = check_image(img);
    BOOST_TEST(r.leaks == 3u);
    BOOST_TEST(r.allocated_clusters == 2u);
    r = check_image(img, check_options::repair::leaks);
    BOOST_TEST(r.leaks_fixed == 2u, "only the trailing clusters can be cut off");
    BOOST_TEST(r.leaks == 1u, "the interior leak stays counted");
    BOOST_TEST(r.image_end_offset == end);
    BOOST_TEST(e.file_size("img.qed") == end);
    r = check_image(img, check_options::repair::all);
    BOOST_TEST(r.leaks == 1u);
    BOOST_TEST(r.leaks_fixed == 0u);
    BOOST_TEST(r.corruptions == 0u);
    expect_pattern(img, 0, c, 1, "cluster 0");
    expect_pattern(img, c, c, 0, "unlinked cluster 1");
    expect_pattern(img, 2 * c, c, 1, "cluster 2");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// corruptions
// ===========================================================================

BOOST_AUTO_TEST_SUITE(corruptions)

BOOST_DATA_TEST_CASE(invalid_offsets_are_counted_and_cleared_by_repair_all, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs, fresh = l.fresh_file_size(), span = l.span();
    e.create("img.qed", e.create_opts(4 * span, l));
    {
        auto img = e.open("img.qed");
        write_pattern(img, 0, 2 * c, 1);
        BOOST_TEST_REQUIRE(!img.close());
    }
    const std::uint64_t end = e.file_size("img.qed");  // fresh + 2c + table
    const std::uint64_t l1 = e.hdr("img.qed").l1_table_offset;
    unsigned n = 0;
    e.set_u64("img.qed", l1 + 8 * 1, fresh + 512);  // L1: misaligned table offset
    ++n;
    e.set_u64("img.qed", l1 + 8 * 2, end + 16 * c);  // L1: table past the end of the file
    ++n;
    if (l.ts > 1) {
        e.set_u64("img.qed", l1 + 8 * 3, end - c);  // L1: table starting inside the file, ending past it
        ++n;
    }
    e.set_u64("img.qed", e.l2_entry_pos("img.qed", 3 * c), fresh + 512);  // L2: misaligned cluster
    ++n;
    e.set_u64("img.qed", e.l2_entry_pos("img.qed", 4 * c), end + 4 * c);  // L2: cluster past the end
    ++n;
    const auto crafted = e.all_bytes("img.qed");

    auto img = e.open("img.qed");
    std::vector<std::uint8_t> b(512);
    BOOST_TEST((img.read(span, b.data(), b.size()) == errc::invalid_l2_offset));
    BOOST_TEST((img.read(2 * span, b.data(), b.size()) == errc::invalid_l2_offset));
    BOOST_TEST((img.read(3 * c, b.data(), b.size()) == errc::invalid_cluster_offset));
    BOOST_TEST((img.read(4 * c, b.data(), b.size()) == errc::invalid_cluster_offset));
    BOOST_TEST((img.write(4 * c, b.data(), b.size()) == errc::invalid_cluster_offset));
    expect_pattern(img, 0, 2 * c, 1, "good clusters still read");

    auto r = check_image(img);
    BOOST_TEST(r.corruptions == n);
    BOOST_TEST(r.corruptions_fixed == 0u);
    BOOST_TEST(r.leaks == 0u);
    BOOST_TEST(r.allocated_clusters == 2u);
    BOOST_TEST(r.messages.size() >= n);
    r = check_image(img, check_options::repair::leaks);
    BOOST_TEST(r.corruptions == n, "repair=leaks leaves corruptions alone");
    BOOST_TEST(r.corruptions_fixed == 0u);
    BOOST_TEST((e.all_bytes("img.qed") == crafted), "repair=leaks changed tables");

    r = check_image(img, check_options::repair::all);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.corruptions_fixed == n);
    BOOST_TEST(r.leaks == 0u);
    BOOST_TEST(!r.need_check_cleared, "the bit was not set");
    BOOST_TEST(e.u64("img.qed", l1 + 8) == 0u);
    BOOST_TEST(e.u64("img.qed", l1 + 16) == 0u);
    BOOST_TEST(e.u64("img.qed", l1 + 24) == 0u);
    BOOST_TEST(e.l2_entry("img.qed", 3 * c) == 0u);
    BOOST_TEST(e.l2_entry("img.qed", 4 * c) == 0u);
    BOOST_TEST(e.l2_entry("img.qed", 0) == fresh, "valid entries stay");
    BOOST_TEST(e.l2_entry("img.qed", c) == fresh + c);
    expect_pattern(img, span, 4096, 0, "cleared L1 entry");
    expect_pattern(img, 3 * c, 2 * c, 0, "cleared L2 entries");
    expect_pattern(img, 0, 2 * c, 1, "data after the repair");
    expect_clean(img);
    write_pattern(img, span + c, c, 2);  // the cleared ranges work again
    write_pattern(img, 3 * c, c, 3);
    BOOST_TEST_REQUIRE(!img.close());
    auto again = e.open("img.qed");
    expect_pattern(again, span + c, c, 2, "after reopen");
    expect_pattern(again, 3 * c, c, 3, "after reopen");
    expect_clean(again);
    BOOST_TEST_REQUIRE(!again.close());
}

// Memory holds only the L1 entries covering the image; the rest of the L1
// is still the image's (QEMU's check walks it): an invalid entry there is
// a corruption, and repair clears it on disk.
BOOST_DATA_TEST_CASE(l1_entries_past_the_image_size_are_checked, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs, fresh = l.fresh_file_size();
    e.create("img.qed", e.create_opts(l.span(), l));  // one L1 entry in use
    {
        auto img = e.open("img.qed");
        write_pattern(img, 0, 2 * c, 1);
        BOOST_TEST_REQUIRE(!img.close());
    }
    const std::uint64_t l1 = e.hdr("img.qed").l1_table_offset;
    const std::uint64_t last = l.entries() - 1;  // far past the entries kept in memory
    e.set_u64("img.qed", l1 + 8 * last, fresh + 512);
    auto img = e.open("img.qed");
    auto r = check_image(img);
    BOOST_TEST(r.corruptions == 1u);
    BOOST_TEST(r.allocated_clusters == 2u);
    r = check_image(img, check_options::repair::all);
    BOOST_TEST(r.corruptions_fixed == 1u);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(e.u64("img.qed", l1 + 8 * last) == 0u);
    expect_pattern(img, 0, 2 * c, 1, "data after the repair");
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

// On fixed-size storage (an NBD export) new clusters go after the last one
// the tables use, not at the end of the storage: a table linked by an L1
// entry past the image size, and the cluster it links, are in use too --
// handing them out again would make two owners of one cluster.
BOOST_DATA_TEST_CASE(fixed_size_storage_keeps_clusters_linked_past_the_image_size, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs, tb = l.table_bytes();
    e.create("img.qed", e.create_opts(l.span(), l));
    {
        auto img = e.open("img.qed");
        write_pattern(img, 0, c, 1);
        BOOST_TEST_REQUIRE(!img.close());
    }
    // Past the image's clusters: a table, then the data cluster it links.
    const std::uint64_t table_at = (e.file_size("img.qed") + c - 1) / c * c;
    const std::uint64_t data_at = table_at + tb;
    e.put("img.qed", table_at, std::vector<std::uint8_t>(static_cast<std::size_t>(tb), 0));
    e.set_u64("img.qed", table_at, data_at);
    e.put("img.qed", data_at, pattern(0, static_cast<std::size_t>(c), 9));
    const std::uint64_t l1 = e.hdr("img.qed").l1_table_offset;
    e.set_u64("img.qed", l1 + 8 * (l.entries() - 1), table_at);
    e.put("img.qed", data_at + c, std::vector<std::uint8_t>(static_cast<std::size_t>(8 * c), 0xee));  // free space
    e.fs.wrap = [](std::shared_ptr<block_file> f, const std::string&) -> std::shared_ptr<block_file> {
        return std::make_shared<fixed_size_file>(std::move(f));
    };
    auto img = e.open("img.qed");
    write_pattern(img, 4 * c, 2 * c, 2);  // two new clusters
    BOOST_TEST_REQUIRE(!img.flush());
    BOOST_TEST((e.bytes("img.qed", data_at, static_cast<std::size_t>(c)) == pattern(0, static_cast<std::size_t>(c), 9)),
               "the cluster linked past the image size was overwritten");
    BOOST_TEST(e.u64("img.qed", table_at) == data_at, "the table linked past the image size was overwritten");
    BOOST_TEST(e.l2_entry("img.qed", 4 * c) >= data_at + c);
    const auto r = check_image(img);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.allocated_clusters == 4u);
    expect_pattern(img, 0, c, 1);
    expect_pattern(img, 4 * c, 2 * c, 2);
    BOOST_TEST_REQUIRE(!img.close());
}

// Grow brings the L1 entries the new size covers into memory, as the disk
// has them: a table an entry there links (check saw it all along) is what
// the new range reads, and new writes there work and survive a reopen.
BOOST_DATA_TEST_CASE(grow_reads_the_l1_entries_it_newly_covers, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs, tb = l.table_bytes(), span = l.span();
    e.create("img.qed", e.create_opts(span, l));
    {
        auto img = e.open("img.qed");
        write_pattern(img, 0, c, 1);
        BOOST_TEST_REQUIRE(!img.close());
    }
    const std::uint64_t table_at = (e.file_size("img.qed") + c - 1) / c * c;
    const std::uint64_t data_at = table_at + tb;
    e.put("img.qed", table_at, std::vector<std::uint8_t>(static_cast<std::size_t>(tb), 0));
    e.set_u64("img.qed", table_at, data_at);
    e.put("img.qed", data_at, pattern(100 * span, static_cast<std::size_t>(c), 9));
    e.set_u64("img.qed", e.hdr("img.qed").l1_table_offset + 8 * 100, table_at);
    {
        auto img = e.open("img.qed");
        BOOST_TEST_REQUIRE(!img.grow(200 * span));
        expect_pattern(img, 100 * span, c, 9, "the table linked past the old size");
        write_pattern(img, 150 * span + c, c, 3);
        write_pattern(img, 100 * span + c, c, 4);
        expect_pattern(img, 0, c, 1);
        const auto r = check_image(img);
        BOOST_TEST(r.corruptions == 0u);
        BOOST_TEST(r.allocated_clusters == 4u);
        BOOST_TEST_REQUIRE(!img.close());
    }
    auto img = e.open("img.qed");
    expect_pattern(img, 0, c, 1);
    expect_pattern(img, 100 * span, c, 9);
    expect_pattern(img, 100 * span + c, c, 4);
    expect_pattern(img, 150 * span + c, c, 3);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_DATA_TEST_CASE(double_references_are_never_repaired, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs, fresh = l.fresh_file_size();
    e.create("img.qed", e.create_opts(8 * c, l));
    {
        auto img = e.open("img.qed");
        write_pattern(img, 0, c, 1);
        write_pattern(img, c, c, 2);  // one write each: cluster 1's data lands after the L2 table
        write_pattern(img, 2 * c, c, 3);
        BOOST_TEST_REQUIRE(!img.close());
    }
    BOOST_TEST_REQUIRE(e.l2_entry("img.qed", 0) == fresh);
    BOOST_TEST_REQUIRE(e.l2_entry("img.qed", c) == fresh + c + l.table_bytes());
    // Clusters 0 and 1 share one data cluster; cluster 1's own (not the
    // last in the file) is referenced by nothing.
    e.set_u64("img.qed", e.l2_entry_pos("img.qed", c), fresh);
    const auto crafted = e.all_bytes("img.qed");

    auto img = e.open("img.qed");
    auto r = check_image(img);
    BOOST_TEST(r.corruptions == 1u);
    BOOST_TEST(r.leaks == 1u, "the cluster nobody points at any more");
    BOOST_TEST(r.allocated_clusters == 2u);
    for (auto mode : {check_options::repair::leaks, check_options::repair::all}) {
        r = check_image(img, mode);
        BOOST_TEST(r.corruptions == 1u);
        BOOST_TEST(r.corruptions_fixed == 0u);
        BOOST_TEST(!r.need_check_cleared);
    }
    BOOST_TEST(e.l2_entry("img.qed", c) == fresh, "the shared entry is left as it is");
    expect_pattern(img, 0, c, 1, "cluster 0");
    const auto shared = read_bytes(img, c, c);
    BOOST_TEST(first_mismatch(shared, 0, c, 0, 1) == -1, "cluster 1 must read cluster 0's bytes (the shared cluster)");
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST((e.all_bytes("img.qed") == crafted), "repair must leave a double reference alone");
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// NEED_CHECK on open and after repair
// ===========================================================================

BOOST_AUTO_TEST_SUITE(need_check_on_open)

namespace {

/// A dirty image whose L2 entry for cluster 3 points past the end of the
/// file (an allocation whose data never landed); clusters 0-1 hold data.
void make_dirty_with_dangling_entry(mem_env& e, const std::string& name, layout l) {
    const std::uint64_t c = l.cs;
    e.create(name, e.create_opts(8 * c, l));
    {
        auto img = e.open(name);
        write_pattern(img, 0, 2 * c, 1);
        BOOST_TEST_REQUIRE(!img.close());
    }
    const std::uint64_t end = e.file_size(name);
    e.set_u64(name, e.l2_entry_pos(name, 3 * c), end + 2 * c);
    e.set_need_check(name);
}

}  // namespace

BOOST_DATA_TEST_CASE(read_write_open_repairs_first, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    make_dirty_with_dangling_entry(e, "img.qed", l);
    std::vector<std::string> log;
    auto o = e.open_opts();
    o.log = [&log](std::string_view line) { log.emplace_back(line); };
    auto img = e.open("img.qed", o);
    BOOST_TEST(e.l2_entry("img.qed", 3 * c) == 0u, "the dangling entry must be cleared on disk");
    BOOST_TEST(!e.need_check_on_disk("img.qed"), "repair must clear NEED_CHECK");
    BOOST_TEST(!img.img.info().need_check);
    BOOST_TEST(any_line_has(log, "img.qed", "repaired"), "the log sink must say what was repaired");
    for (const auto& line : log) BOOST_TEST_MESSAGE("log: " << line);
    expect_pattern(img, 3 * c, c, 0, "the repaired cluster");
    expect_pattern(img, 0, 2 * c, 1, "data survives the repair");
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_DATA_TEST_CASE(read_only_open_does_not_repair, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    make_dirty_with_dangling_entry(e, "img.qed", l);
    const auto crafted = e.all_bytes("img.qed");
    auto o = e.open_opts();
    o.read_only = true;
    auto img = e.open("img.qed", o);
    BOOST_TEST(img.img.info().need_check);
    std::vector<std::uint8_t> b(c);
    BOOST_TEST((img.read(3 * c, b.data(), b.size()) == errc::invalid_cluster_offset));
    std::vector<std::uint8_t> wide(4 * c);
    BOOST_TEST((img.read(0, wide.data(), wide.size()) == errc::invalid_cluster_offset),
               "a read over the bad cluster fails as a whole");
    expect_pattern(img, 0, 2 * c, 1, "good data stays readable");
    expect_pattern(img, 4 * c, 4 * c, 0, "beyond the bad cluster");
    const auto r = check_image(img);
    BOOST_TEST(r.corruptions == 1u);
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(e.need_check_on_disk("img.qed"));
    BOOST_TEST((e.all_bytes("img.qed") == crafted), "a read-only open changed the file");
}

BOOST_AUTO_TEST_CASE(repair_clears_need_check_when_nothing_remains) {
    mem_env e;
    const layout l{65536, 4};
    const std::uint64_t c = l.cs;
    make_dirty_with_dangling_entry(e, "img.qed", l);
    auto o = e.open_opts();
    o.repair_on_open = false;
    auto img = e.open("img.qed", o);
    BOOST_TEST(img.img.info().need_check);
    auto r = check_image(img);
    BOOST_TEST(r.corruptions == 1u);
    BOOST_TEST(!r.need_check_cleared);
    BOOST_TEST(e.need_check_on_disk("img.qed"));
    r = check_image(img, check_options::repair::leaks);
    BOOST_TEST(r.corruptions == 1u);
    BOOST_TEST(!r.need_check_cleared, "corruption remains: the bit stays");
    BOOST_TEST(e.need_check_on_disk("img.qed"));
    r = check_image(img, check_options::repair::all);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.corruptions_fixed == 1u);
    BOOST_TEST(r.need_check_cleared);
    BOOST_TEST(!e.need_check_on_disk("img.qed"));
    BOOST_TEST(!img.img.info().need_check);
    BOOST_TEST(e.l2_entry("img.qed", 3 * c) == 0u);
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(!e.need_check_on_disk("img.qed"));
}

BOOST_AUTO_TEST_CASE(dirty_but_consistent_image_opens_clean_without_changes) {
    mem_env e;
    e.create("img.qed", e.create_opts(MiB));
    {
        auto img = e.open("img.qed");
        write_pattern(img, 0, 64 * KiB, 1);
        BOOST_TEST_REQUIRE(!img.close());
    }
    e.set_need_check("img.qed");
    const auto before = e.all_bytes("img.qed");
    std::vector<std::string> log;
    auto o = e.open_opts();
    o.log = [&log](std::string_view line) { log.emplace_back(line); };
    auto img = e.open("img.qed", o);
    BOOST_TEST(!e.need_check_on_disk("img.qed"));
    BOOST_TEST(!any_line_has(log, "img.qed", "repaired"), "nothing was repaired");
    const auto after = e.all_bytes("img.qed");
    BOOST_TEST(std::equal(after.begin() + 64, after.end(), before.begin() + 64, before.end()),
               "only the header may change");
    expect_pattern(img, 0, 64 * KiB, 1, "data");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// check between requests
// ===========================================================================

BOOST_AUTO_TEST_SUITE(check_and_requests)

BOOST_DATA_TEST_CASE(check_waits_for_requests_and_holds_new_ones, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    const std::uint64_t span = l.span();
    e.create("img.qed", e.create_opts(2 * span, l));
    e.fs.wrap = [](std::shared_ptr<block_file> f, const std::string&) -> std::shared_ptr<block_file> {
        return std::make_shared<chaos_file>(std::move(f), 4242);
    };
    auto o = e.open_opts();
    o.l2_cache_size = 2;
    auto img = e.open("img.qed", o);

    // Clusters spread over both tables; wave 1 and wave 2 disjoint.
    const unsigned per_wave = 120;
    auto cluster_of = [&](unsigned i) {
        const std::uint64_t k = (i * 37u) % (2 * std::min<std::uint64_t>(l.entries(), 400));
        return (k % 2 ? span : 0) + (k / 2) * c;
    };
    std::set<std::uint64_t> seen;
    std::vector<std::uint64_t> pos;
    for (unsigned i = 0; pos.size() < 2 * per_wave; ++i)
        if (seen.insert(cluster_of(i)).second) pos.push_back(cluster_of(i));

    std::vector<std::vector<std::uint8_t>> bufs;
    for (unsigned i = 0; i < 2 * per_wave; ++i) bufs.push_back(pattern(pos[i], c, 100 + i));
    unsigned order = 0, done = 0, failed = 0;
    std::vector<unsigned> finished_at(2 * per_wave, 0);
    unsigned check_at = 0;
    std::error_code check_ec = errc::invalid_argument;
    check_result result;
    auto issue = [&](unsigned i) {
        img.img.async_write_at(pos[i], boost::asio::buffer(bufs[i]), [&, i](std::error_code ec, std::size_t) {
            finished_at[i] = ++order;
            failed += ec ? 1 : 0;
            ++done;
        });
    };
    for (unsigned i = 0; i < per_wave; ++i) issue(i);
    img.img.async_check(check_options{}, [&](std::error_code ec, check_result r) {
        check_at = ++order;
        check_ec = ec;
        result = std::move(r);
        ++done;
    });
    for (unsigned i = per_wave; i < 2 * per_wave; ++i) issue(i);
    BOOST_TEST_REQUIRE(run_until(
                           e.ioc, [&] { return done == 2 * per_wave + 1; }, std::chrono::seconds(30)),
                       "hang: " << 2 * per_wave + 1 - done << " operations never completed");
    BOOST_TEST(failed == 0u);
    BOOST_TEST(!check_ec, check_ec.message());
    unsigned early = 0, late = 0;
    for (unsigned i = 0; i < per_wave; ++i) early += finished_at[i] > check_at;
    for (unsigned i = per_wave; i < 2 * per_wave; ++i) late += finished_at[i] < check_at;
    BOOST_TEST(early == 0u, "requests started before the check must finish before it");
    BOOST_TEST(late == 0u, "requests started after the check must wait for it");
    BOOST_TEST(result.allocated_clusters == per_wave, "the check sees exactly the first wave");
    BOOST_TEST(result.corruptions == 0u);
    BOOST_TEST(result.leaks == 0u);

    const auto r = check_image(img);
    BOOST_TEST(r.allocated_clusters == 2u * per_wave);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.leaks == 0u);
    for (unsigned i = 0; i < 2 * per_wave; i += 7) expect_pattern(img, pos[i], c, 100 + i, "written cluster");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(repair_between_requests) {
    // A repairing check queued behind writes, with reads and writes behind it.
    mem_env e;
    const layout l{4096, 1};
    e.create("img.qed", e.create_opts(8 * MiB, l));
    {
        auto img = e.open("img.qed");
        write_pattern(img, 0, 4096, 1);
        BOOST_TEST_REQUIRE(!img.close());
    }
    append_junk_clusters(e, "img.qed", 4096, 4);
    const std::uint64_t junk_start = e.file_size("img.qed") - 4 * 4096;
    auto img = e.open("img.qed");
    std::vector<std::vector<std::uint8_t>> bufs;
    for (unsigned i = 0; i < 64; ++i) bufs.push_back(pattern(i * 64 * KiB + 4096 * 8, 4096, 10 + i));
    unsigned done = 0, failed = 0;
    for (unsigned i = 0; i < 32; ++i)
        img.img.async_write_at(i * 64 * KiB + 4096 * 8, boost::asio::buffer(bufs[i]),
                               [&](std::error_code ec, std::size_t) {
                                   failed += ec ? 1 : 0;
                                   ++done;
                               });
    check_result result;
    img.img.async_check(check_options{check_options::repair::leaks}, [&](std::error_code ec, check_result r) {
        failed += ec ? 1 : 0;
        result = std::move(r);
        ++done;
    });
    for (unsigned i = 32; i < 64; ++i)
        img.img.async_write_at(i * 64 * KiB + 4096 * 8, boost::asio::buffer(bufs[i]),
                               [&](std::error_code ec, std::size_t) {
                                   failed += ec ? 1 : 0;
                                   ++done;
                               });
    BOOST_TEST_REQUIRE(run_until(
        e.ioc, [&] { return done == 65; }, std::chrono::seconds(30)));
    BOOST_TEST(failed == 0u);
    // The junk was not at the end any more once wave 1 allocated after it:
    // those leaks are interior now and stay counted.
    BOOST_TEST(result.corruptions == 0u);
    BOOST_TEST(result.leaks + result.leaks_fixed == 4u);
    BOOST_TEST(result.allocated_clusters == 33u);
    BOOST_TEST_REQUIRE(!img.flush());
    BOOST_TEST(e.l2_entry("img.qed", 8 * 4096) >= junk_start + 4 * 4096, "wave 1 allocated after the junk");
    for (unsigned i = 0; i < 64; ++i) expect_pattern(img, i * 64 * KiB + 4096 * 8, 4096, 10 + i, "written");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// the need-check bit's life cycle
// ===========================================================================

BOOST_AUTO_TEST_SUITE(need_check_timer)

namespace {

/// Offsets in a file that hold metadata: header cluster, L1, every L2 table.
struct regions {
    std::uint64_t cs = 0, l1 = 0, tb = 0;
    std::set<std::uint64_t> tables;
    bool is_l1(std::uint64_t off) const { return off >= l1 && off < l1 + tb; }
    bool is_table(std::uint64_t off) const {
        auto it = tables.upper_bound(off);
        return it != tables.begin() && off < *std::prev(it) + tb;
    }
    bool is_data(std::uint64_t off) const { return off >= cs && !is_l1(off) && !is_table(off); }
};
regions regions_of(mem_env& e, const std::string& name) {
    regions r;
    const header h = e.hdr(name);
    const geometry g(h);
    r.cs = h.cluster_size;
    r.l1 = h.l1_table_offset;
    r.tb = g.table_bytes;
    for (std::uint64_t i = 0; i < g.table_entries; ++i)
        if (const std::uint64_t t = e.u64(name, r.l1 + 8 * i)) r.tables.insert(t);
    return r;
}

/// With a backing file: walk a log of the I/O as it reached the storage.
/// Every L2 entry a table write puts on disk must point at a data cluster
/// (only checked with a backing file: without one NEED_CHECK covers it)
/// whose last write was followed by a flush before that table write; every
/// L1 entry likewise for its (new, whole) table. Entries to clusters never
/// written in the log are not checked. Requests must each use their own
/// clusters (an in-place rewrite would look like unflushed data).
struct order_stats {
    unsigned entries_checked = 0, flushes = 0, violations = 0;
    std::string first_violation;
};
order_stats check_flush_order(mem_env& e, const io_log& log, const std::string& name, bool with_backing = true) {
    order_stats st;
    const regions rg = regions_of(e, name);
    const std::uint64_t c = rg.cs;
    std::map<std::uint64_t, std::size_t> last_write;  // host cluster -> log index of its last write
    std::optional<std::size_t> last_flush;
    // A new table is private until an L1 write links it: its writes before
    // that (whole, or only the blocks holding entries when it lies in fresh
    // space) are not updates. Tables the log never links were there before
    // it: every write to them is an update. (A table that was there before
    // and shares an L1 sector with a new one counts as new until that
    // sector's write: its earlier writes go unchecked, never misjudged.)
    std::map<std::uint64_t, std::size_t> first_link;  // table -> log index of the first L1 write carrying it
    for (std::size_t idx = 0; idx < log.size(); ++idx) {
        const auto& r = log[idx];
        if (r.file != name || r.what != io_record::write || !rg.is_l1(r.offset)) continue;
        for (std::size_t k8 = 0; k8 + 8 <= r.data.size(); k8 += 8) {
            std::uint64_t entry = 0;
            for (int b = 7; b >= 0; --b) entry = (entry << 8) | r.data[k8 + static_cast<std::size_t>(b)];
            if (entry) first_link.emplace(entry, idx);
        }
    }
    auto flushed_since = [&](std::uint64_t host_cluster) {
        const auto it = last_write.find(host_cluster);
        return it == last_write.end() || (last_flush && *last_flush > it->second);
    };
    auto violation = [&](const std::string& what) {
        if (st.violations++ == 0) st.first_violation = what;
    };
    for (std::size_t idx = 0; idx < log.size(); ++idx) {
        const auto& r = log[idx];
        if (r.file != name) continue;
        if (r.what == io_record::flush) {
            last_flush = idx;
            ++st.flushes;
            continue;
        }
        if (r.what != io_record::write) continue;
        if (with_backing && r.written_header && r.written_header->has(feature_need_check))
            violation("NEED_CHECK written with a backing file");
        if (r.offset == 0) continue;
        const bool to_l1 = rg.is_l1(r.offset);
        bool update = to_l1;
        if (rg.is_table(r.offset)) {
            const std::uint64_t t = *std::prev(rg.tables.upper_bound(r.offset));
            const auto link = first_link.find(t);
            update = link == first_link.end() || link->second < idx;
        }
        if (!update) {
            for (std::uint64_t p = r.offset / c * c; p < r.offset + r.length; p += c) last_write[p / c] = idx;
            continue;
        }
        if (r.data.size() != r.length) {
            violation("table write without captured bytes");
            continue;
        }
        for (std::size_t k8 = 0; k8 + 8 <= r.data.size(); k8 += 8) {
            std::uint64_t entry = 0;
            for (int b = 7; b >= 0; --b) entry = (entry << 8) | r.data[k8 + static_cast<std::size_t>(b)];
            if (entry <= zero_cluster_entry) continue;
            ++st.entries_checked;
            if (to_l1) {
                for (std::uint64_t t = entry; t < entry + rg.tb; t += c)
                    if (!flushed_since(t / c))
                        violation("L1 entry to table " + std::to_string(entry) + " (log #" + std::to_string(idx) +
                                  ") written before the table was flushed");
            } else if (with_backing && !flushed_since(entry / c)) {
                violation("L2 entry to cluster " + std::to_string(entry) + " (log #" + std::to_string(idx) +
                          ", table write at " + std::to_string(r.offset) +
                          ") written before that cluster's data (log #" + std::to_string(last_write[entry / c]) +
                          ") was flushed");
            }
        }
    }
    return st;
}

}  // namespace

BOOST_DATA_TEST_CASE(need_check_reaches_the_disk_before_the_first_allocation, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    e.create("img.qed", e.create_opts(l.span() + 4 * c, l));
    auto log = std::make_shared<io_log>();
    e.fs.wrap = [log](std::shared_ptr<block_file> f, const std::string& name) -> std::shared_ptr<block_file> {
        return std::make_shared<recording_file>(std::move(f), log, name);
    };
    auto o = e.open_opts();
    o.need_check_timeout = std::chrono::seconds(60);
    auto img = e.open("img.qed", o);
    BOOST_TEST(!e.need_check_on_disk("img.qed"));
    log->clear();

    write_pattern(img, c + 512, 1024, 1);  // allocating: data cluster and a new L2 table
    BOOST_TEST(e.need_check_on_disk("img.qed"), "NEED_CHECK must be on disk right after the first allocation");
    BOOST_TEST(img.img.info().need_check);
    // Order: the header write with the bit comes before the allocation; and
    // a flush makes it durable before the write that links the new clusters
    // (here the L1 entry of the new L2 table). Data and the new table itself
    // may land earlier: nothing points at them yet.
    BOOST_TEST(!img.flush());  // table entries reach the disk by write-back
    const std::uint64_t fresh = l.fresh_file_size();
    const std::uint64_t l1_begin = c, l1_end = c + c * l.ts;
    std::optional<std::size_t> header_at, flush_at, first_alloc_at, first_link_at;
    for (std::size_t i = 0; i < log->size(); ++i) {
        const auto& r = (*log)[i];
        if (r.what == io_record::write && r.offset == 0 && !header_at) {
            BOOST_TEST_REQUIRE(r.written_header.has_value());
            BOOST_TEST(r.written_header->has(feature_need_check));
            header_at = i;
        } else if (r.what == io_record::flush && header_at && !flush_at) {
            flush_at = i;
        } else if (r.what == io_record::write && r.offset >= fresh && !first_alloc_at) {
            first_alloc_at = i;
        }
        if (r.what == io_record::write && r.offset >= l1_begin && r.offset < l1_end && !first_link_at)
            first_link_at = i;
    }
    BOOST_TEST_REQUIRE(header_at.has_value(), "the header was never written");
    BOOST_TEST_REQUIRE(first_alloc_at.has_value());
    BOOST_TEST(*header_at < *first_alloc_at, "NEED_CHECK must be written before the allocation");
    BOOST_TEST_REQUIRE(first_link_at.has_value(), "the L1 entry was never written");
    BOOST_TEST_REQUIRE(flush_at.has_value());
    BOOST_TEST(*flush_at < *first_link_at, "and flushed before anything links the new clusters");

    // Later allocations don't rewrite the header.
    log->clear();
    write_pattern(img, l.span() + c, c, 2);  // another table
    write_pattern(img, 2 * c, c, 3);
    for (const auto& r : *log) BOOST_TEST(!(r.what == io_record::write && r.offset == 0));
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(!e.need_check_on_disk("img.qed"), "close clears the bit");
}

BOOST_DATA_TEST_CASE(with_a_backing_file_a_flush_precedes_every_l2_update, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    const std::uint64_t size = l.span() + 8 * c;
    e.make_raw("base.raw", 8 * c, 5);  // covers the first table's clusters (the second prefills zeros)
    auto co = e.create_opts(size, l);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto log = std::make_shared<io_log>();
    e.fs.wrap = [log](std::shared_ptr<block_file> f, const std::string& name) -> std::shared_ptr<block_file> {
        return std::make_shared<recording_file>(std::move(f), log, name, io_hook{}, true);
    };
    auto o = e.open_opts();
    o.need_check_timeout = milliseconds(10);
    auto img = e.open("top.qed", o);
    log->clear();

    // Allocating writes, one at a time: new tables, partial clusters
    // (prefilled from the backing file), whole clusters, and zeroes.
    const std::uint64_t writes[] = {c + 512, 3 * c, 0, l.span() + c, 5 * c + 1024, l.span() + 2 * c};
    unsigned seed = 1;
    for (std::uint64_t at : writes) {
        write_pattern(img, at, at % c ? 1024 : c, seed++);
        BOOST_TEST(!e.need_check_on_disk("top.qed"), "no NEED_CHECK with a backing file");
    }
    BOOST_TEST_REQUIRE(!img.write_zeroes(6 * c + 512, 1024));
    e.ioc.restart();
    e.ioc.run_for(milliseconds(50));  // any timer would have fired
    BOOST_TEST(!e.need_check_on_disk("top.qed"));

    const auto o_stats = check_flush_order(e, *log, "top.qed");
    BOOST_TEST(o_stats.violations == 0u, o_stats.first_violation);
    const unsigned entries_checked = o_stats.entries_checked, flushes = o_stats.flushes;
    BOOST_TEST(entries_checked >= 7u, "the test saw too few table updates to mean anything");
    BOOST_TEST(flushes >= 2u);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_DATA_TEST_CASE(no_table_entry_overtakes_what_it_points_to_under_concurrency,
                     data::make(all_layouts) * data::make({true, false}), l, with_backing) {
    // The same rule with allocating writes in flight and the storage running
    // I/O in a random order (a chaos file above the recording one: the log
    // shows the order in which the bytes really landed, and the bytes each
    // table write really carried). With a backing file: no L2 entry before
    // its data is flushed. Always: no L1 entry before its new table is flushed.
    mem_env e;
    const std::uint64_t c = l.cs;
    const std::uint64_t span = l.span();
    const std::uint64_t per_table = std::min<std::uint64_t>(l.entries(), 96);
    auto co = e.create_opts(4 * span, l);
    if (with_backing) {
        e.make_raw("base.raw", per_table * c, 5);
        co.backing_file = "base.raw";
        co.backing_format = image_format::raw;
    }
    e.create("top.qed", co);
    auto log = std::make_shared<io_log>();
    e.fs.wrap = [log, seed = l.cs + l.ts](std::shared_ptr<block_file> f,
                                          const std::string& name) -> std::shared_ptr<block_file> {
        auto rec = std::make_shared<recording_file>(std::move(f), log, name, io_hook{}, true);
        return std::make_shared<chaos_file>(std::move(rec), static_cast<unsigned>(seed));
    };
    auto img = e.open("top.qed");
    log->clear();

    // Every request its own cluster(s), in a shuffled order, both tables.
    std::vector<std::uint64_t> clusters;
    for (std::uint64_t k = 0; k < per_table; ++k)
        for (std::uint64_t t = 0; t < 4; ++t) clusters.push_back(t * span + k * c);
    std::mt19937 rng(7);
    std::shuffle(clusters.begin(), clusters.end(), rng);
    struct req {
        std::uint64_t off;
        std::vector<std::uint8_t> buf;
    };
    std::vector<req> reqs;
    for (std::size_t i = 0; i < clusters.size(); ++i) {
        const std::uint64_t in = (i % 3 == 0) ? 0 : 512 * (i % 5);  // some whole, some partial (prefilled)
        const std::size_t len = static_cast<std::size_t>(i % 3 == 0 ? c : 1024);
        reqs.push_back({clusters[i] + in, pattern(clusters[i] + in, len, 1 + static_cast<unsigned>(i % 200))});
    }
    // A few at a time, each completion starting the next: batches follow
    // one another while earlier table updates are still on their way.
    unsigned done = 0, failed = 0;
    std::size_t next = 0;
    std::function<void()> start_next = [&] {
        if (next == reqs.size()) return;
        auto& r = reqs[next++];
        img.img.async_write_at(r.off, boost::asio::buffer(r.buf), [&](std::error_code ec, std::size_t) {
            failed += ec ? 1 : 0;
            ++done;
            start_next();
        });
    };
    for (int k = 0; k < 6; ++k) start_next();
    BOOST_TEST_REQUIRE(run_until(
        e.ioc, [&] { return done == reqs.size(); }, std::chrono::seconds(30)));
    BOOST_TEST(failed == 0u);
    BOOST_TEST_REQUIRE(!img.flush());
    const auto st = check_flush_order(e, *log, "top.qed", with_backing);
    BOOST_TEST(st.violations == 0u, st.violations << " violations; first: " << st.first_violation);
    BOOST_TEST(st.entries_checked >= reqs.size() / 2, "too few table updates seen to mean anything");
    for (std::size_t i = 0; i < reqs.size(); i += 9)
        expect_pattern(img, reqs[i].off, reqs[i].buf.size(), 1 + static_cast<unsigned>(i % 200), "written");
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(timer_clears_only_after_the_quiet_time) {
    mem_env e;
    e.create("img.qed", e.create_opts(16 * MiB));
    auto o = e.open_opts();
    const milliseconds quiet(300);
    o.need_check_timeout = quiet;
    auto img = e.open("img.qed", o);
    using clock = std::chrono::steady_clock;

    // Three allocations 100 ms apart, then quiet: the bit is set the whole
    // time and may only go once `quiet` has passed since the last one.
    clock::time_point last_alloc{};
    bool violated = false;
    std::optional<clock::time_point> cleared_at;
    auto poll = [&](milliseconds for_how_long) {
        const auto until = clock::now() + for_how_long;
        while (clock::now() < until && !cleared_at) {
            e.ioc.restart();
            e.ioc.run_for(milliseconds(5));
            if (!e.need_check_on_disk("img.qed")) {
                cleared_at = clock::now();
                if (*cleared_at - last_alloc < quiet - milliseconds(2)) violated = true;
            }
        }
    };
    for (unsigned i = 0; i < 3; ++i) {
        write_pattern(img, i * MiB, 4096, i + 1);
        last_alloc = clock::now();
        BOOST_TEST(e.need_check_on_disk("img.qed"));
        poll(milliseconds(100));
        if (cleared_at) {
            // Only legitimate if this machine stalled for the whole quiet time.
            BOOST_TEST(!violated, "NEED_CHECK cleared "
                                      << std::chrono::duration_cast<milliseconds>(*cleared_at - last_alloc).count()
                                      << " ms after an allocation (quiet time " << quiet.count() << " ms)");
            cleared_at.reset();
        }
    }
    poll(std::chrono::seconds(5));
    BOOST_TEST_REQUIRE(cleared_at.has_value(), "the timer never cleared the bit");
    BOOST_TEST(!violated, "cleared before the quiet time was over");
    BOOST_TEST(!img.img.info().need_check);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(timer_never_fires_on_a_closed_image) {
    mem_env e;
    e.create("img.qed", e.create_opts(4 * MiB));
    auto log = std::make_shared<io_log>();
    e.fs.wrap = [log](std::shared_ptr<block_file> f, const std::string& name) -> std::shared_ptr<block_file> {
        return std::make_shared<recording_file>(std::move(f), log, name);
    };
    auto o = e.open_opts();
    o.need_check_timeout = milliseconds(50);
    auto img = e.open("img.qed", o);
    write_pattern(img, 0, 4096, 1);  // arms the timer
    BOOST_TEST(e.need_check_on_disk("img.qed"));
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(!e.need_check_on_disk("img.qed"), "close clears the bit");
    const auto after_close = e.all_bytes("img.qed");
    const std::size_t ops_at_close = log->size();

    e.ioc.restart();
    e.ioc.run_for(milliseconds(200));
    BOOST_TEST(log->size() == ops_at_close, "I/O after close");
    BOOST_TEST((e.all_bytes("img.qed") == after_close), "the file changed after close");
    // Nothing is left pending: run() returns at once.
    e.ioc.restart();
    const auto t0 = std::chrono::steady_clock::now();
    e.ioc.run();
    BOOST_TEST((std::chrono::steady_clock::now() - t0 < milliseconds(40)), "run() waited for something after close");
}

BOOST_AUTO_TEST_CASE(need_check_is_set_whenever_tables_are_updated) {
    // A 1 ms quiet time and a stream of allocating writes with small gaps:
    // the timer keeps clearing the bit between them. Whenever an L2 entry or
    // L1 entry is written (the moment a new cluster becomes reachable), the
    // bit must be on disk.
    mem_env e;
    const layout l{4096, 1};
    e.create("img.qed", e.create_opts(64 * MiB, l));
    const std::uint64_t l1 = e.hdr("img.qed").l1_table_offset;
    auto log = std::make_shared<io_log>();
    unsigned updates = 0, unguarded = 0;
    auto storage = e.fs.storage("img.qed");
    e.fs.wrap = [&, log](std::shared_ptr<block_file> f, const std::string& name) -> std::shared_ptr<block_file> {
        auto hook = [&](const io_record& r) {
            if (r.what != io_record::write || r.offset == 0) return;
            // Full-cluster data writes and whole new tables are 4 KiB; entry
            // updates are single sectors (and L1 lives at l1).
            const bool update = r.length < l.cs || (r.offset >= l1 && r.offset < l1 + l.table_bytes());
            if (!update) return;
            ++updates;
            std::array<std::byte, header_struct_size> hb{};
            storage->read(0, hb);
            if (!decode(hb).has(feature_need_check)) ++unguarded;
        };
        return std::make_shared<recording_file>(std::move(f), log, name, hook);
    };
    auto o = e.open_opts();
    o.need_check_timeout = milliseconds(1);
    auto img = e.open("img.qed", o);
    const unsigned n = 120;
    std::vector<std::vector<std::uint8_t>> bufs;
    for (unsigned i = 0; i < n; ++i) bufs.push_back(pattern(i * 5 * 4096, 4096, 1 + i));
    unsigned done = 0, failed = 0;
    boost::asio::steady_timer gap(e.ioc);
    std::function<void(unsigned)> next = [&](unsigned i) {
        if (i == n) return;
        img.img.async_write_at(i * 5 * 4096, boost::asio::buffer(bufs[i]), [&, i](std::error_code ec, std::size_t) {
            failed += ec ? 1 : 0;
            ++done;
            gap.expires_after(std::chrono::microseconds((i % 4) * 700));  // 0 .. 2.1 ms
            gap.async_wait([&, i](boost::system::error_code) { next(i + 1); });
        });
    };
    next(0);
    BOOST_TEST_REQUIRE(run_until(
        e.ioc, [&] { return done == n; }, std::chrono::seconds(30)));
    BOOST_TEST(!img.flush());  // the last table updates are written back by now
    BOOST_TEST(failed == 0u);
    // Write-back may merge neighbouring updates into one round; most writes
    // still get their own, or the test would not see the timer interleave.
    BOOST_TEST(updates >= n / 2);
    BOOST_TEST(unguarded == 0u,
               unguarded << " of " << updates << " table updates were written while NEED_CHECK was clear");
    unsigned header_writes = 0;
    for (const auto& r : *log) header_writes += r.what == io_record::write && r.offset == 0;
    BOOST_TEST_MESSAGE(header_writes << " header writes (the timer cleared and allocations set the bit again)");
    BOOST_TEST(header_writes >= 2u, "the timer never ran between the writes: the test did not test anything");
    for (unsigned i = 0; i < n; i += 11) expect_pattern(img, i * 5 * 4096, 4096, 1 + i, "written");
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// Last: a failure here may take the process down.
BOOST_AUTO_TEST_SUITE(dropped_image)

BOOST_AUTO_TEST_CASE(timer_never_fires_on_a_dropped_image) {
    // All handles dropped without close while the timer is pending: the
    // image goes away, the timer with it. The bit stays (no clean close).
    mem_env e;
    e.create("img.qed", e.create_opts(4 * MiB));
    auto o = e.open_opts();
    o.need_check_timeout = milliseconds(50);
    {
        auto img = e.open("img.qed", o);
        write_pattern(img, 0, 4096, 1);
        BOOST_TEST(e.need_check_on_disk("img.qed"));
    }
    // Whatever the dropped image still had under way may finish (memory
    // I/O completes at once); the quiet time has not passed yet.
    e.ioc.restart();
    e.ioc.poll();
    const auto dropped = e.all_bytes("img.qed");
    e.ioc.restart();
    e.ioc.run_for(milliseconds(200));
    BOOST_TEST((e.all_bytes("img.qed") == dropped), "the file changed after the image was dropped");
    BOOST_TEST(e.need_check_on_disk("img.qed"));
    // The next read-write open checks it and finds it consistent; the write
    // (never flushed) is there or not, nothing else.
    auto img = e.open("img.qed");
    BOOST_TEST(!e.need_check_on_disk("img.qed"));
    const auto got = read_bytes(img, 0, 4096);
    BOOST_TEST((first_mismatch(got, 0, 4096, 0, 1) == -1 || first_mismatch(got, 0, 4096, 0, 0) == -1),
               "the dropped image's write left neither its old nor its new bytes");
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()
