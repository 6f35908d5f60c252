// SPDX-License-Identifier: BSL-1.0
// The check's judgement alone (check/scan.hpp), fed tables by hand: what it
// calls corrupt, what repair clears, what leaks and what can be cut off the
// end -- across cluster sizes and table sizes, no I/O.
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <ostream>

#include "check/scan.hpp"
#include "support/layer_cases.hpp"

using namespace qed;
using namespace qed::detail;
namespace data = boost::unit_test::data;

namespace {

using test::geo_case;
const std::vector<geo_case> cases{{4096, 1}, {4096, 4}, {65536, 4}, {65536, 16}, {1u << 20, 1}};

/// An image: header cluster, L1 table, then `clusters` more (the file's end).
struct image_layout {
    image_layout(const geo_case& gc, std::uint64_t clusters) {
        h.cluster_size = gc.cluster_size;
        h.table_size = gc.table_size;
        h.header_size = 1;
        h.l1_table_offset = gc.cluster_size;
        h.image_size = 1ull << 30;
        rules.geo = geometry(h);
        rules.l1_offset = h.l1_table_offset;
        rules.file_end = first() + clusters * gc.cluster_size;
    }
    /// Offset of the n-th cluster after the L1 table.
    std::uint64_t at(std::uint64_t n) const { return first() + n * rules.geo.cluster_size; }
    std::uint64_t first() const { return h.l1_table_offset + std::uint64_t{h.table_size} * h.cluster_size; }
    header h;
    layout rules;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(check_scan_suite)

// A consistent image: every cluster referenced once, nothing leaked.
BOOST_DATA_TEST_CASE(consistent_image, data::make(cases), gc) {
    image_layout img(gc, gc.table_size + 3);
    check_result out;
    check_scan scan(img.rules, img.h, false, out);
    std::uint64_t l2_off = img.at(0);
    bool changed = false;
    BOOST_TEST(scan.visit_l1(0, l2_off, changed));
    table piece(16);
    piece[0] = img.at(gc.table_size);
    piece[1] = img.at(gc.table_size + 1);
    piece[5] = img.at(gc.table_size + 2);
    piece[6] = zero_cluster_entry;
    BOOST_TEST(!scan.visit_l2(img.at(0), 0, piece));
    BOOST_TEST(scan.count_leaks(false) == 0u);
    BOOST_TEST(out.corruptions == 0u);
    BOOST_TEST(out.leaks == 0u);
    BOOST_TEST(out.allocated_clusters == 3u);
    BOOST_TEST(out.fragmented_clusters == 0u);
    BOOST_TEST(out.image_end_offset == img.rules.file_end);
    BOOST_TEST(!changed);
    BOOST_TEST((verdict_of(out) == check_verdict::consistent));
}

// Invalid offsets: reported, or cleared when repairing (and then no longer
// counted as corruption); a cluster referenced twice is never repairable.
BOOST_DATA_TEST_CASE(corruptions_and_repair, data::make(cases), gc) {
    for (const bool fix : {false, true}) {
        image_layout img(gc, gc.table_size + 2);
        check_result out;
        check_scan scan(img.rules, img.h, fix, out);
        bool changed = false;
        std::uint64_t inside_l1 = img.h.l1_table_offset;
        BOOST_TEST(!scan.visit_l1(1, inside_l1, changed));
        BOOST_TEST(changed == fix);
        BOOST_TEST(inside_l1 == (fix ? 0u : img.h.l1_table_offset));
        std::uint64_t good = img.at(0);
        changed = false;
        BOOST_TEST(scan.visit_l1(0, good, changed));
        table piece(8);
        piece[0] = img.at(gc.table_size);
        piece[1] = img.at(gc.table_size) + 512;  // misaligned
        piece[2] = img.rules.file_end;           // past the end
        piece[3] = img.at(gc.table_size);        // twice
        BOOST_TEST(scan.visit_l2(img.at(0), 0, piece) == fix);
        BOOST_TEST(piece[1] == (fix ? 0u : img.at(gc.table_size) + 512));
        BOOST_TEST(out.corruptions == (fix ? 1u : 4u));  // the double reference stays
        BOOST_TEST(out.corruptions_fixed == (fix ? 3u : 0u));
        BOOST_TEST((verdict_of(out) == check_verdict::corrupt));
        BOOST_TEST(!out.messages.empty());
    }
}

// Leaks: unreferenced clusters after the header; those at the end of the
// file can be cut off. On fixed-size storage what follows the last used
// cluster is free space.
BOOST_DATA_TEST_CASE(leaks_and_the_tail, data::make(cases), gc) {
    for (const bool fixed : {false, true}) {
        image_layout img(gc, gc.table_size + 6);
        check_result out;
        check_scan scan(img.rules, img.h, false, out);
        std::uint64_t l2 = img.at(0);
        bool changed = false;
        BOOST_TEST(scan.visit_l1(0, l2, changed));
        table piece(4);
        piece[0] = img.at(gc.table_size + 1);  // cluster table+0 is leaked (a hole)
        piece[1] = img.at(gc.table_size + 3);  // table+2 leaked; table+4, +5 leaked at the end
        BOOST_TEST(!scan.visit_l2(img.at(0), 0, piece));
        const std::uint64_t tail = scan.count_leaks(fixed);
        BOOST_TEST(out.image_end_offset == img.at(gc.table_size + 4));
        if (fixed) {
            BOOST_TEST(tail == 0u);
            BOOST_TEST(out.leaks == 2u);
        } else {
            BOOST_TEST(tail == 2u);
            BOOST_TEST(out.leaks == 4u);
            scan.leaks_cut(tail);
            BOOST_TEST(out.leaks == 2u);
            BOOST_TEST(out.leaks_fixed == 2u);
        }
        scan.report_leaks();
        BOOST_TEST(out.messages.back() == "2 leaked clusters");
        BOOST_TEST((verdict_of(out) == check_verdict::consistent));  // leaks are not corruption
    }
}

// Fragmentation counts data clusters that don't follow their predecessor.
BOOST_DATA_TEST_CASE(fragmentation, data::make(cases), gc) {
    image_layout img(gc, gc.table_size + 4);
    check_result out;
    check_scan scan(img.rules, img.h, false, out);
    std::uint64_t l2 = img.at(0);
    bool changed = false;
    BOOST_TEST(scan.visit_l1(0, l2, changed));
    table piece(4);
    piece[0] = img.at(gc.table_size + 2);
    piece[1] = img.at(gc.table_size + 3);
    piece[2] = img.at(gc.table_size);
    piece[3] = img.at(gc.table_size + 1);
    BOOST_TEST(!scan.visit_l2(img.at(0), 0, piece));
    BOOST_TEST(out.allocated_clusters == 4u);
    BOOST_TEST(out.fragmented_clusters == 1u);
}

// An I/O error leaves the verdict open: nothing can be said.
BOOST_AUTO_TEST_CASE(io_errors_make_it_unknown) {
    image_layout img({65536, 4}, 8);
    check_result out;
    check_scan scan(img.rules, img.h, true, out);
    scan.io_error("cannot read L2 table at 0x50000: Input/output error");
    BOOST_TEST(out.check_errors == 1u);
    BOOST_TEST((verdict_of(out) == check_verdict::unknown));
    BOOST_TEST(hex_offset(0x50000) == "0x50000");
}

BOOST_AUTO_TEST_SUITE_END()
