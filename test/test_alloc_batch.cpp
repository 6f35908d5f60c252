// SPDX-License-Identifier: BSL-1.0
// The request layer alone (request/engine.hpp, the AIOCBs and the
// allocating batch) over the table layer's metadata of a file laid out in
// memory, with a stand-in for the image above (request/host.hpp): a backing
// file in memory, counters for the need-check timer's signals and for the
// gate. Checks what the batch writes and in which order, that concurrent
// allocating writes travel in one batch, that prefill comes from the
// backing file, and that every request reports back to the gate.
#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <cstring>
#include <ostream>
#include <vector>

#include "request/engine.hpp"
#include "support/cluster_print.hpp"
#include "support/layer_cases.hpp"
#include "support/metadata_fixture.hpp"

using namespace qed;
using namespace qed::detail;
namespace data = boost::unit_test::data;

namespace {

using test::succeeded;

/// The image's side of request/host.hpp, in memory.
struct stand_in_host final : request_host {
    explicit stand_in_host(boost::asio::any_io_executor ex) : ex(std::move(ex)) {}
    std::optional<std::uint64_t> backing_size() const noexcept override {
        if (!has_backing) return std::nullopt;
        return backing.size();
    }
    void read_backing(std::uint64_t pos, mutable_buffers buffers, op_handler handler) override {
        ++backing_reads;
        std::uint64_t at = pos;
        for (const auto& b : buffers) {
            BOOST_REQUIRE(at + b.size() <= backing.size());  // the engine clips at the backing file's end
            std::memcpy(b.data(), backing.data() + at, b.size());
            at += b.size();
        }
        boost::asio::post(ex, [h = std::move(handler)]() mutable { std::move(h)(boost::system::error_code{}); });
    }
    void allocations_busy() override { ++busy; }
    void allocations_idle() override { ++idle; }
    void request_done() override { ++done; }

    boost::asio::any_io_executor ex;
    bool has_backing = false;
    std::vector<char> backing;
    int backing_reads = 0, busy = 0, idle = 0, done = 0;
};

using test::geo_case;
const std::vector<geo_case> cases{{4096, 1}, {65536, 4}, {65536, 16}};

struct bench {
    bench(const geo_case& gc, bool backing)
        : f(gc.cluster_size, gc.table_size, 64ull << 20, 0, backing), host(f.ioc.get_executor()), eng(*f.meta, host) {
        host.has_backing = backing;
    }
    std::error_code write(std::uint64_t pos, const std::vector<char>& bytes) {
        std::optional<std::error_code> r;
        eng.write(nullptr, pos, const_buffers{boost::asio::buffer(bytes)}, {},
                  [&](boost::system::error_code ec, std::size_t) { r = ec; });
        f.run();
        BOOST_REQUIRE(r);
        return *r;
    }
    std::vector<char> read(std::uint64_t pos, std::size_t n) {
        std::vector<char> out(n);
        std::optional<std::error_code> r;
        eng.read(nullptr, pos, mutable_buffers{boost::asio::buffer(out)},
                 [&](boost::system::error_code ec, std::size_t) { r = ec; });
        f.run();
        BOOST_REQUIRE(r && !*r);
        return out;
    }
    std::size_t count(test::io_record::kind k) const {
        return std::count_if(f.log->begin(), f.log->end(), [k](const auto& r) { return r.what == k; });
    }
    test::metadata_fixture f;
    stand_in_host host;
    request_engine eng;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(alloc_batch)

// Requests waiting while a batch runs travel together in the next one:
// many allocating writes, few NEED_CHECK writes, every byte readable, every
// request reported to the gate, and the queue says busy, then idle.
BOOST_DATA_TEST_CASE(waiting_writes_share_a_batch, data::make(cases), gc) {
    bench b(gc, false);
    const std::uint64_t cs = gc.cluster_size;
    constexpr int n = 16;
    std::vector<std::vector<char>> bufs;
    for (int i = 0; i < n; ++i) bufs.emplace_back(4096, static_cast<char>('a' + i));
    int completed = 0;
    for (int i = 0; i < n; ++i)
        b.eng.write(nullptr, std::uint64_t(i) * cs, const_buffers{boost::asio::buffer(bufs[i])}, {},
                    [&](boost::system::error_code ec, std::size_t bytes) {
                        BOOST_TEST(!ec);
                        BOOST_TEST(bytes == 4096u);
                        ++completed;
                    });
    BOOST_TEST(completed == 0);  // never inside the call
    b.f.run();
    BOOST_TEST(completed == n);
    BOOST_TEST(b.host.done == n);
    BOOST_TEST(b.host.busy >= 1);
    BOOST_TEST(b.host.busy <= 2);  // the first request's batch, then one carrying all the others
    BOOST_TEST(b.host.idle == 1);
    BOOST_TEST(b.f.meta->hdr().has(feature_need_check));
    std::size_t header_writes = 0;
    for (const auto& r : *b.f.log) header_writes += r.what == test::io_record::write && r.offset == 0;
    BOOST_TEST(header_writes == 1u);  // NEED_CHECK written once, before the first allocation
    for (int i = 0; i < n; ++i) BOOST_TEST(b.read(std::uint64_t(i) * cs, 4096) == bufs[i]);
    // The first request's batch started at once, alone (with the new L2
    // table after its cluster); the other requests' clusters, allocated
    // together, are consecutive in the file, in guest order.
    l2_ref held;
    const lookup r = find_cluster(*b.f.meta, held, cs, std::uint64_t(n - 1) * cs);
    BOOST_TEST(r.run.what == cluster_run::kind::data);
    BOOST_TEST(r.run.length == std::min<std::uint64_t>(std::uint64_t(n - 1) * cs, b.f.meta->geo().l2_span() - cs));
    const lookup first = find_cluster(*b.f.meta, held, 0, cs);
    BOOST_TEST(first.run.host_offset + cs + b.f.meta->geo().table_bytes == r.run.host_offset);
}

// With a backing file: the rest of a partly written cluster comes from it
// (prefill and postfill), past its end it is zeros, no NEED_CHECK is
// written, and the data is flushed before the table entry that links it.
BOOST_DATA_TEST_CASE(prefill_from_the_backing_file, data::make(cases), gc) {
    bench b(gc, true);
    const std::uint64_t cs = gc.cluster_size;
    b.host.backing.assign(cs + cs / 2, 'B');  // ends in the middle of cluster 1
    std::vector<char> mine(1024, 'x');
    BOOST_TEST(!b.write(512, mine));
    BOOST_TEST(!b.write(cs + 512, mine));
    BOOST_TEST(b.host.backing_reads >= 2);
    std::vector<char> expect0(cs, 'B');
    std::copy(mine.begin(), mine.end(), expect0.begin() + 512);
    BOOST_TEST(b.read(0, cs) == expect0);
    std::vector<char> expect1(cs, 'B');
    std::fill(expect1.begin() + cs / 2, expect1.end(), 0);
    std::copy(mine.begin(), mine.end(), expect1.begin() + 512);
    BOOST_TEST(b.read(cs, cs) == expect1);
    BOOST_TEST(!b.f.meta->hdr().has(feature_need_check));

    // Make it durable: a write-back round flushes before the L2 write.
    b.f.log->clear();
    std::optional<std::error_code> synced;
    b.f.meta->sync(true, [&](boost::system::error_code ec) { synced = ec; });
    b.f.run();
    BOOST_TEST(succeeded(synced));
    BOOST_REQUIRE(!b.f.log->empty());
    BOOST_TEST(b.f.log->front().what == test::io_record::flush);
}

// Write-zeroes over unallocated whole clusters makes zero clusters: no
// space taken, no data written; partial clusters are written as zeros.
BOOST_DATA_TEST_CASE(write_zeroes_makes_zero_clusters, data::make(cases), gc) {
    bench b(gc, false);
    const std::uint64_t cs = gc.cluster_size;
    const std::uint64_t end_before = b.f.meta->alloc().end();
    std::optional<std::error_code> r;
    b.eng.write_zeroes(nullptr, 0, 4 * cs, {}, [&](boost::system::error_code ec) { r = ec; });
    b.f.run();
    BOOST_TEST(succeeded(r));
    BOOST_TEST(b.f.meta->alloc().end() == end_before + b.f.meta->geo().table_bytes);  // the new L2 table only
    l2_ref held;
    const lookup z = find_cluster(*b.f.meta, held, 0, 4 * cs);
    BOOST_TEST(z.run.what == cluster_run::kind::zero);
    BOOST_TEST(z.run.length == 4 * cs);
    r.reset();
    b.eng.write_zeroes(nullptr, 5 * cs + 512, 1024, {}, [&](boost::system::error_code ec) { r = ec; });
    b.f.run();
    BOOST_TEST(succeeded(r));
    const lookup d = find_cluster(*b.f.meta, held, 5 * cs, cs);
    BOOST_TEST(d.run.what == cluster_run::kind::data);
    BOOST_TEST(b.read(5 * cs, cs) == std::vector<char>(cs, 0));
}

// A failed data write fails its request and gives the space back: the
// next batch takes the same clusters, and nothing links the failed ones.
BOOST_AUTO_TEST_CASE(failed_batch_gives_space_back) {
    bench b({65536, 4}, false);
    const std::uint64_t end_before = b.f.meta->alloc().end();
    b.f.faults->fail_at[test::fault_plan::write] = 1;  // write 0 is NEED_CHECK, write 1 the data
    std::vector<char> mine(4096, 'y');
    BOOST_TEST(b.write(0, mine) == std::make_error_code(std::errc::io_error));
    BOOST_TEST(b.f.meta->alloc().end() == end_before);  // given back
    BOOST_TEST(b.f.meta->alloc().tail_garbage());       // close cuts what may have landed
    l2_ref held;
    BOOST_TEST(find_cluster(*b.f.meta, held, 0, 4096).run.what == cluster_run::kind::no_table);
    BOOST_TEST(b.host.done == 1);
    BOOST_TEST(!b.write(0, mine));
    const lookup r = find_cluster(*b.f.meta, held, 0, 4096);
    BOOST_TEST(r.run.what == cluster_run::kind::data);
    BOOST_TEST(r.run.host_offset == end_before);  // the same space, reused
    BOOST_TEST(b.read(0, 4096) == mine);
}

BOOST_AUTO_TEST_SUITE_END()
