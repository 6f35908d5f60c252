// SPDX-License-Identifier: BSL-1.0
// The allocation plan alone (cluster/alloc_plan.hpp): which claims travel
// together, where their clusters and tables go, how each new cluster is
// filled, what is written where and which entries change. No I/O: tables
// are l2_entry objects in memory, claims point at local buffers. Every case
// runs across cluster sizes and table sizes.
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <map>
#include <numeric>
#include <ostream>
#include <vector>

#include "cluster/alloc_plan.hpp"
#include "support/layer_cases.hpp"

using namespace qed;
using namespace qed::detail;
namespace data = boost::unit_test::data;

namespace {

using test::geo_case;
const std::vector<geo_case> cases{{4096, 1}, {4096, 4}, {65536, 1}, {65536, 4}, {65536, 16}, {1u << 20, 2}};

geometry make_geometry(const geo_case& c) {
    header h;
    h.cluster_size = c.cluster_size;
    h.table_size = c.table_size;
    h.header_size = 1;
    h.l1_table_offset = c.cluster_size;
    return geometry(h);
}

/// The tables a plan sees: L1 index -> loaded table, absent (missing) or
/// marked unusable.
struct tables {
    explicit tables(const geometry& g) : g(g) {}
    l2_ref add(std::uint64_t l1_index, std::uint64_t offset) {
        auto t = std::make_shared<l2_entry>(offset, g.table_entries);
        t->loaded = true;
        by_index[l1_index] = t;
        return t;
    }
    alloc_plan::table_lookup lookup() {
        return [this](std::uint64_t i, bool& missing, bool& invalid) -> l2_ref {
            missing = invalid = false;
            if (broken.count(i)) {
                invalid = true;
                return nullptr;
            }
            auto it = by_index.find(i);
            if (it == by_index.end()) {
                missing = true;
                return nullptr;
            }
            return it->second->loaded ? it->second : nullptr;  // a table being loaded is not usable yet
        };
    }
    geometry g;
    std::map<std::uint64_t, l2_ref> by_index;
    std::map<std::uint64_t, bool> broken;
};

alloc_claim data_claim(std::uint64_t pos, std::vector<char>& bytes) {
    alloc_claim c;
    c.pos = pos;
    c.len = bytes.size();
    c.how = alloc_claim::mode::data;
    c.data.emplace_back(bytes.data(), bytes.size());
    return c;
}

alloc_claim zero_claim(std::uint64_t pos, std::uint64_t len, alloc_claim::mode how) {
    alloc_claim c;
    c.pos = pos;
    c.len = len;
    c.how = how;
    return c;
}

std::uint64_t total(const std::vector<alloc_piece>& ps, alloc_piece::source s) {
    std::uint64_t n = 0;
    for (const auto& p : ps)
        if (p.from == s) n += p.len;
    return n;
}

l2_ref new_table_at(std::uint64_t off, const geometry& g, std::vector<std::uint64_t>* placed = nullptr) {
    if (placed) placed->push_back(off);
    return std::make_shared<l2_entry>(off, g.table_entries);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(alloc_plan_suite)

// Claims that touch the same bytes never travel together; neighbours, other
// clusters and other tables do.
BOOST_DATA_TEST_CASE(absorb_refuses_overlap_only, data::make(cases), gc) {
    const geometry g = make_geometry(gc);
    tables t(g);
    t.add(0, 64ull * gc.cluster_size);
    std::vector<char> a(512, 'a'), b(512, 'b'), c(512, 'c'), d(512, 'd');
    alloc_plan plan(g);
    BOOST_TEST(plan.absorb(data_claim(0, a), t.lookup()));
    BOOST_TEST(!plan.absorb(data_claim(256, b), t.lookup()));            // overlaps a's bytes
    BOOST_TEST(plan.absorb(data_claim(512, b), t.lookup()));             // right after a, same cluster
    BOOST_TEST(plan.absorb(data_claim(g.cluster_size, c), t.lookup()));  // the next cluster
    BOOST_TEST(plan.absorb(data_claim(g.l2_span(), d), t.lookup()));     // another L2 table (missing: new)
    BOOST_TEST(plan.claims() == 4u);
    BOOST_TEST(plan.new_data_clusters() == 3u);
    BOOST_TEST(plan.has_new_tables());
}

// A cluster can't be both a zero cluster and data in one batch; a cluster
// allocated meanwhile and a table not in memory keep a claim out.
BOOST_DATA_TEST_CASE(absorb_refuses_mixed_and_stale, data::make(cases), gc) {
    const geometry g = make_geometry(gc);
    tables t(g);
    l2_ref l2 = t.add(0, 64ull * gc.cluster_size);
    l2->t[2] = 70ull * gc.cluster_size;  // cluster 2 is allocated
    t.broken[1] = true;
    std::vector<char> a(512, 'a');
    alloc_plan plan(g);
    BOOST_TEST(plan.absorb(zero_claim(0, g.cluster_size, alloc_claim::mode::zero_clusters), t.lookup()));
    BOOST_TEST(!plan.absorb(data_claim(512, a), t.lookup()));                    // inside the zero cluster being made
    BOOST_TEST(!plan.absorb(data_claim(2ull * g.cluster_size, a), t.lookup()));  // allocated meanwhile
    BOOST_TEST(!plan.absorb(data_claim(g.l2_span(), a), t.lookup()));            // invalid table
    l2_ref loading = std::make_shared<l2_entry>(128ull * gc.cluster_size, g.table_entries);
    t.by_index[2] = loading;  // loaded == false: in flight, not usable yet
    BOOST_TEST(!plan.absorb(data_claim(2 * g.l2_span(), a), t.lookup()));
    BOOST_TEST(plan.claims() == 1u);
}

// The head always goes; followers stop at the byte limit.
BOOST_DATA_TEST_CASE(absorb_limits_batch_bytes, data::make(cases), gc) {
    const geometry g = make_geometry(gc);
    tables t(g);
    alloc_plan plan(g);
    const std::uint64_t big = std::max<std::uint64_t>(alloc_plan::max_bytes, g.cluster_size) + g.cluster_size;
    // A head claim larger than the limit (it may span several tables' worth
    // only within its own table: clip it there).
    const std::uint64_t head_len = std::min<std::uint64_t>(big, g.l2_span());
    BOOST_TEST(plan.absorb(zero_claim(0, head_len, alloc_claim::mode::zero_data), t.lookup()));
    std::vector<char> a(512, 'a');
    const bool over = plan.new_data_clusters() * g.cluster_size >= alloc_plan::max_bytes;
    BOOST_TEST(plan.absorb(data_claim(4 * g.l2_span(), a), t.lookup()) == !over);
}

// Data clusters get space in guest order from the allocator's end, new
// tables after them; nothing else moves.
BOOST_DATA_TEST_CASE(place_data_then_tables, data::make(cases), gc) {
    const geometry g = make_geometry(gc);
    tables t(g);
    t.add(0, 64ull * gc.cluster_size);
    std::vector<char> a(512, 'a'), b(512, 'b'), c(512, 'c');
    alloc_plan plan(g);
    BOOST_TEST(plan.absorb(data_claim(3ull * g.cluster_size, a), t.lookup()));
    BOOST_TEST(plan.absorb(data_claim(g.cluster_size, b), t.lookup()));
    BOOST_TEST(plan.absorb(data_claim(g.l2_span() + g.cluster_size, c), t.lookup()));
    cluster_allocator alloc;
    const std::uint64_t end0 = 100ull * g.cluster_size;
    alloc.reset(end0, end0);
    std::vector<std::uint64_t> placed;
    plan.place(alloc, [&](std::uint64_t off) { return new_table_at(off, g, &placed); });
    BOOST_TEST(plan.start() == end0);
    BOOST_TEST(plan.end() == end0 + 3 * g.cluster_size + g.table_bytes);
    BOOST_TEST(alloc.end() == plan.end());
    BOOST_REQUIRE(placed.size() == 1u);
    BOOST_TEST(placed[0] == end0 + 3 * g.cluster_size);
    const auto l2 = plan.l2_updates();
    BOOST_REQUIRE(l2.size() == 2u);  // clusters 1 and 3 of table 0, in guest order
    BOOST_TEST(l2[0].index == 1u);
    BOOST_TEST(l2[0].value == end0);
    BOOST_TEST(l2[1].index == 3u);
    BOOST_TEST(l2[1].value == end0 + g.cluster_size);
    const auto l1 = plan.l1_updates();
    BOOST_REQUIRE(l1.size() == 1u);
    BOOST_TEST(l1[0].l1_index == 1u);
    BOOST_TEST(l1[0].table->offset == placed[0]);
}

// Pieces: the claim's bytes, and around them zeros without a backing file,
// backing data with one, zeros past its end, and zeros in a zero cluster.
BOOST_DATA_TEST_CASE(pieces_fill_sources, data::make(cases), gc) {
    const geometry g = make_geometry(gc);
    tables t(g);
    l2_ref l2 = t.add(0, 64ull * gc.cluster_size);
    l2->t[1] = zero_cluster_entry;
    std::vector<char> a(1024, 'a'), b(1024, 'b');
    alloc_plan plan(g);
    BOOST_TEST(plan.absorb(data_claim(512, a), t.lookup()));                   // cluster 0: unallocated
    BOOST_TEST(plan.absorb(data_claim(g.cluster_size + 512, b), t.lookup()));  // cluster 1: zero cluster
    cluster_allocator alloc;
    alloc.reset(10ull * g.cluster_size, 10ull * g.cluster_size);
    plan.place(alloc, [&](std::uint64_t off) { return new_table_at(off, g); });
    const std::uint64_t cs = g.cluster_size;

    // No backing file: everything but the claims is zeros.
    auto none = plan.pieces(false, 0);
    BOOST_TEST(total(none, alloc_piece::source::data) == 2048u);
    BOOST_TEST(total(none, alloc_piece::source::zeros) == 2 * cs - 2048);
    BOOST_TEST(total(none, alloc_piece::source::backing) == 0u);
    // Pieces tile both clusters in guest order.
    std::uint64_t at = 0;
    for (const auto& p : none) {
        BOOST_TEST(p.pos == at);
        at += p.len;
    }
    BOOST_TEST(at == 2 * cs);

    // A backing file covering everything: cluster 0's gaps come from it;
    // the zero cluster's gaps stay zeros.
    auto full = plan.pieces(true, 1ull << 40);
    BOOST_TEST(total(full, alloc_piece::source::backing) == cs - 1024);
    BOOST_TEST(total(full, alloc_piece::source::zeros) == cs - 1024);
    std::size_t n = 0;
    for (const auto& p : full)
        if (p.from == alloc_piece::source::backing) BOOST_TEST(p.backing_buffer == n++);  // numbered in order

    // A backing file ending inside cluster 0's postfill: zeros past its end.
    auto short_backing = plan.pieces(true, 4096);
    BOOST_TEST(total(short_backing, alloc_piece::source::backing) == 512u + (4096u - 1536u));
}

// Writes: zero fill below the old physical end is written, above it left as
// a hole (with the file reaching the end of the last cluster); a new table
// past the physical end is written only where it holds entries, and the
// file extended to the batch's end.
BOOST_DATA_TEST_CASE(writes_skip_fresh_zeros, data::make(cases), gc) {
    const geometry g = make_geometry(gc);
    const std::uint64_t cs = g.cluster_size;
    const std::size_t block = 512;
    for (const bool old_bytes : {false, true}) {
        tables t(g);
        t.add(0, 64ull * cs);
        std::vector<char> a(512, 'a');
        alloc_plan plan(g);
        BOOST_TEST(plan.absorb(data_claim(0, a), t.lookup()));
        cluster_allocator alloc;
        const std::uint64_t end0 = 100ull * cs;
        alloc.reset(end0, old_bytes ? end0 + 10 * cs : end0);
        plan.place(alloc, [&](std::uint64_t off) { return new_table_at(off, g); });
        const auto pieces = plan.pieces(false, 0);
        const auto w = plan.writes(pieces, {}, alloc.physical_size(), block);
        BOOST_TEST(!w.resize);  // no new table
        std::uint64_t bytes = 0, first = ~0ull, last = 0;
        for (const auto& x : w.writes) {
            std::uint64_t n = 0;
            for (const auto& b : x.bytes) n += b.size();
            bytes += n;
            first = std::min(first, x.offset);
            last = std::max(last, x.offset + n);
        }
        BOOST_TEST(first == end0);
        BOOST_TEST(last == end0 + cs);  // the file reaches the end of the cluster either way
        if (old_bytes)
            BOOST_TEST(bytes == cs);  // the whole cluster: old bytes must not show through
        else
            BOOST_TEST(bytes == 512u + block * (cs > 512 + block ? 1 : 0));  // data, then the last block only
    }
    // A new table: only the block holding the new entry is written, and the
    // file is extended to the table's end.
    tables t(g);
    std::vector<char> a(512, 'a');
    alloc_plan plan(g);
    const std::uint64_t pos = g.l2_span() + 5 * cs;
    BOOST_TEST(plan.absorb(data_claim(pos, a), t.lookup()));
    cluster_allocator alloc;
    alloc.reset(100ull * cs, 100ull * cs);
    plan.place(alloc, [&](std::uint64_t off) { return new_table_at(off, g); });
    const auto w = plan.writes(plan.pieces(false, 0), {}, alloc.physical_size(), block);
    BOOST_TEST(w.resize == (plan.end() > 100ull * cs));
    const auto l1 = plan.l1_updates();
    BOOST_REQUIRE(l1.size() == 1u);
    BOOST_TEST(l1[0].table->t[5] == 100ull * cs);  // filled in before it is written
    bool table_block = false;
    for (const auto& x : w.writes)
        if (x.offset >= l1[0].table->offset) {
            std::uint64_t n = 0;
            for (const auto& b : x.bytes) n += b.size();
            BOOST_TEST(n == std::min<std::uint64_t>(block, g.table_bytes));
            BOOST_TEST(x.offset == l1[0].table->offset);  // entry 5 lies in the first block
            table_block = true;
        }
    BOOST_TEST(table_block);
}

// Zero clusters get entry 1, no space, no data.
BOOST_DATA_TEST_CASE(zero_clusters_take_no_space, data::make(cases), gc) {
    const geometry g = make_geometry(gc);
    tables t(g);
    t.add(0, 64ull * gc.cluster_size);
    alloc_plan plan(g);
    BOOST_TEST(plan.absorb(zero_claim(0, 2ull * g.cluster_size, alloc_claim::mode::zero_clusters), t.lookup()) ==
               (g.table_entries >= 2));
    if (g.table_entries < 2) return;
    cluster_allocator alloc;
    alloc.reset(100ull * g.cluster_size, 100ull * g.cluster_size);
    plan.place(alloc, [&](std::uint64_t off) { return new_table_at(off, g); });
    BOOST_TEST(plan.new_data_clusters() == 0u);
    BOOST_TEST(plan.end() == plan.start());
    BOOST_TEST(plan.pieces(true, 1ull << 40).empty());
    for (const auto& u : plan.l2_updates()) BOOST_TEST(u.value == zero_cluster_entry);
    BOOST_TEST(plan.l2_updates().size() == 2u);
}

BOOST_AUTO_TEST_SUITE_END()
