// SPDX-License-Identifier: BSL-1.0
// Cluster lookup alone (cluster/find_cluster.hpp) over the table layer's
// metadata of a file laid out in memory: the kinds of run it answers, where
// runs stop, what it reports as corrupt, and when it asks for a table to be
// loaded -- across cluster sizes and table sizes.
#include <array>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <ostream>

#include "cluster/find_cluster.hpp"
#include "qed/error.hpp"
#include "support/cluster_print.hpp"
#include "support/layer_cases.hpp"
#include "support/metadata_fixture.hpp"

using namespace qed;
using namespace qed::detail;
namespace data = boost::unit_test::data;

namespace {

using test::geo_case;
const std::vector<geo_case> cases{{4096, 1}, {4096, 16}, {65536, 1}, {65536, 4}, {1u << 20, 1}};

}  // namespace

BOOST_AUTO_TEST_SUITE(find_cluster_suite)

// No L2 table: one run to the end of the table's range (or the request).
BOOST_DATA_TEST_CASE(no_table_runs_to_the_table_end, data::make(cases), gc) {
    test::metadata_fixture f(gc.cluster_size, gc.table_size, 1ull << 40, 8);
    const geometry& g = f.meta->geo();
    l2_ref held;
    const std::uint64_t pos = g.l2_span() - 3 * g.cluster_size + 512;
    const lookup r = find_cluster(*f.meta, held, pos, 10 * g.cluster_size);
    BOOST_TEST(!r.ec);
    BOOST_TEST(!r.need_table);
    BOOST_TEST(r.run.what == cluster_run::kind::no_table);
    BOOST_TEST(r.run.length == g.l2_span() - pos);  // stops where the next table's range starts
    const lookup s = find_cluster(*f.meta, held, 0, 4096);
    BOOST_TEST(s.run.length == 4096u);
}

// A table not in memory: the lookup asks for it (and holds nothing).
BOOST_DATA_TEST_CASE(missing_table_is_asked_for, data::make(cases), gc) {
    test::metadata_fixture f(gc.cluster_size, gc.table_size, 1ull << 40, 2 * gc.table_size + 8);
    l2_ref held;
    const std::uint64_t t = f.cluster(0);
    f.meta->l1()[0] = t;  // linked, not cached
    const lookup r = find_cluster(*f.meta, held, 0, 4096);
    BOOST_TEST(r.need_table);
    BOOST_TEST(r.table_offset == t);
    BOOST_TEST(!held);
    BOOST_TEST(f.log->empty());  // a lookup never does I/O
}

// Runs of one kind: unallocated entries, zero clusters, and data clusters
// contiguous in the file; a run stops where the kind or the contiguity
// changes, and at an invalid entry (reported by the next lookup).
BOOST_DATA_TEST_CASE(runs_of_one_kind, data::make(cases), gc) {
    test::metadata_fixture f(gc.cluster_size, gc.table_size, 1ull << 40, gc.table_size + 16);
    const geometry& g = f.meta->geo();
    const std::uint64_t cs = g.cluster_size;
    l2_ref t = f.link_table(0, f.cluster(0));
    const std::uint64_t d = f.cluster(gc.table_size);  // first data cluster after the table
    t->t[2] = zero_cluster_entry;
    t->t[3] = zero_cluster_entry;
    t->t[4] = d;
    t->t[5] = d + cs;
    t->t[6] = d + 3 * cs;  // not contiguous with 5
    t->t[7] = d + 4 * cs;
    t->t[8] = 1ull << 50;  // past the end of the file
    l2_ref held;
    auto at = [&](std::uint64_t k, std::uint64_t len) { return find_cluster(*f.meta, held, k * cs, len); };

    lookup r = at(0, 10 * cs);
    BOOST_TEST(r.run.what == cluster_run::kind::unallocated);
    BOOST_TEST(r.run.length == 2 * cs);
    BOOST_TEST(held == t);  // the table is held while the request uses it
    r = at(2, 10 * cs);
    BOOST_TEST(r.run.what == cluster_run::kind::zero);
    BOOST_TEST(r.run.length == 2 * cs);
    r = find_cluster(*f.meta, held, 4 * cs + 512, 10 * cs);
    BOOST_TEST(r.run.what == cluster_run::kind::data);
    BOOST_TEST(r.run.host_offset == d + 512);
    BOOST_TEST(r.run.length == 2 * cs - 512);  // clusters 4 and 5 are contiguous, 6 is not
    r = at(6, 10 * cs);
    BOOST_TEST(r.run.what == cluster_run::kind::data);
    BOOST_TEST(r.run.length == 2 * cs);  // 6 and 7, then the invalid 8
    r = at(8, cs);
    BOOST_TEST(r.ec == make_error_code(errc::invalid_cluster_offset));
    r = at(4, cs / 2);
    BOOST_TEST(r.run.length == cs / 2);  // never longer than asked
}

// An L1 entry pointing into the L1 table itself, or unaligned, is corrupt.
BOOST_DATA_TEST_CASE(invalid_l1_entries, data::make(cases), gc) {
    test::metadata_fixture f(gc.cluster_size, gc.table_size, 1ull << 40, 8);
    l2_ref held;
    f.meta->l1()[0] = f.meta->hdr().l1_table_offset;  // the L1 table
    BOOST_TEST(find_cluster(*f.meta, held, 0, 512).ec == make_error_code(errc::invalid_l2_offset));
    f.meta->l1()[0] = f.cluster(0) + 512;  // unaligned
    BOOST_TEST(find_cluster(*f.meta, held, 0, 512).ec == make_error_code(errc::invalid_l2_offset));
    f.meta->l1()[0] = 0;
    BOOST_TEST(!find_cluster(*f.meta, held, 0, 512).ec);
}

// A table is loaded once, whatever the number of requests asking at the
// same time, and reaches the cache exactly once.
BOOST_DATA_TEST_CASE(concurrent_loads_share_one_read, data::make(cases), gc) {
    test::metadata_fixture f(gc.cluster_size, gc.table_size, 1ull << 40, gc.table_size + 8);
    const std::uint64_t t = f.cluster(0);
    f.meta->l1()[0] = t;
    // Entry 0 links a data cluster (little-endian on disk); the rest of the
    // table is a hole, which a load does not read.
    const std::uint64_t d = f.cluster(gc.table_size);
    std::array<std::byte, 8> le{};
    for (int i = 0; i < 8; ++i) le[static_cast<std::size_t>(i)] = static_cast<std::byte>(d >> (8 * i));
    f.storage->write(t, le);
    int done = 0;
    for (int i = 0; i < 5; ++i)
        f.meta->load_l2(t, [&](boost::system::error_code ec) {
            BOOST_TEST(!ec);
            ++done;
        });
    BOOST_TEST(done == 0);  // never inside the call
    f.run();
    BOOST_TEST(done == 5);
    std::size_t reads = 0;
    std::uint64_t bytes_read = 0;
    for (const auto& r : *f.log)
        if (r.what == test::io_record::read) {
            ++reads;
            bytes_read += r.length;
        }
    BOOST_TEST(reads == 1u);
    // Only the part of the table the file holds is read (memory files keep
    // 64 KiB pages): a mostly empty table costs what it holds.
    BOOST_TEST(bytes_read <= std::min<std::uint64_t>(65536, f.meta->geo().table_bytes));
    l2_ref held;
    const lookup r = find_cluster(*f.meta, held, 0, 512);
    BOOST_TEST(!r.need_table);
    BOOST_TEST(r.run.what == cluster_run::kind::data);
    BOOST_TEST(r.run.host_offset == d);
}

BOOST_AUTO_TEST_SUITE_END()
