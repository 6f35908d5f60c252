// SPDX-License-Identifier: BSL-1.0
// Power loss at every I/O.
//
// crash_at_every_io: a workload (several streams of guest requests running
// at once: allocating writes that add L2 tables, partial clusters,
// write-zeroes aligned and not, overwrites, FUA writes, flushes, reads, and
// pairs of writes racing on one cluster) runs on a power_loss_file whose
// completions arrive out of order. For every k, the power fails at the k-th
// file operation; the image after the crash is built from what was flushed
// plus a subset of the unflushed operations (none, all, prefixes, random
// subsets, one write torn at a sector boundary), reopened read-write (the
// library checks and repairs a dirty image) and verified sector by sector:
//   - a sector whose write completed before a completed flush (or was FUA)
//     holds that write or one issued after it completed, never anything older;
//   - every other sector holds its old value or one of the values written
//     to it -- never stale or foreign bytes, never zeros where the backing
//     file's data belongs;
//   - our check finds no corruption, an independent walk of the tables finds
//     no invalid entry and no cluster referenced twice, close succeeds and
//     leaves NEED_CHECK clear; on a sample, `qemu-img check` agrees.
// On a sample of dirty images the power fails again at every I/O of the
// repairing open, and the result must verify the same way.
//
// Two races the sweep found, replayed step by step by holding one operation
// in flight:
//   flush_covers_an_in_place_write_racing_a_metadata_update: a write that
//     went in place into a cluster whose L2/L1 link was still on its way,
//     then a flush (or FUA) -- the acknowledged write must survive;
//   a_table_write_links_only_data_flushed_before_it: with a backing file, an
//     L2 sector must not reach the disk carrying the entry of a cluster whose
//     data the preceding flush did not cover.
//
// crash_while_changing_the_backing_file: the header + name rewrite, torn.
//
// QED_PL_WORKLOAD=<name> and QED_PL_CRASH=<k> narrow a run for debugging;
// QED_PL_TRACE=1 prints every file operation.
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "qed/image.hpp"
#include "support/fixed_size_file.hpp"
#include "support/memory_fs.hpp"
#include "support/model.hpp"
#include "support/power_loss_file.hpp"
#include "support/qed_inspect.hpp"
#include "support/qemu_tools.hpp"
#include "support/sync.hpp"
#include "support/tmp_dir.hpp"

namespace bdata = boost::unit_test::data;
using namespace qed;
using namespace qed::test;

namespace {

constexpr std::uint32_t cs = 4096;
constexpr std::uint64_t backing_tag = 7;

enum class backing_kind { none, raw, qed };

struct workload {
    const char* name;
    std::uint32_t table_size;
    backing_kind backing;
    unsigned hop_seed;                // completion order
    unsigned max_hops;                // completions are delayed by up to this many executor hops
    unsigned qemu_every;              // run qemu-img check on every n-th crash point (0: never)
    bool race_only = false;           // only the racing streams (below), to try many completion orders
    unsigned second_crash_every = 0;  // crash again during the repair, on every n-th crash point
    bool timer = false;               // need-check timer at 0 ms: NEED_CHECK is cleared whenever allocations pause
    bool fixed = false;               // the image is on storage of fixed size holding old bytes (an NBD export)
};
std::ostream& operator<<(std::ostream& os, const workload& w) {
    return os << w.name;
}

const workload workloads[] = {
    {"no_backing_ts1", 1, backing_kind::none, 11, 3, 0, false, 3},
    {"no_backing_ts1_reordered", 1, backing_kind::none, 12, 8, 0},
    {"raw_backing_ts1", 1, backing_kind::raw, 11, 3, 0},
    {"raw_backing_ts1_reordered", 1, backing_kind::raw, 12, 8, 0},
    {"qed_backing_ts1", 1, backing_kind::qed, 11, 3, 0},
    {"qed_backing_ts1_reordered", 1, backing_kind::qed, 18, 8, 0},
    {"no_backing_ts1_c", 1, backing_kind::none, 16, 5, 0},
    {"raw_backing_ts1_c", 1, backing_kind::raw, 17, 5, 0},
    // QEMU can't open table_size 1 images (REFERENCE.md, QEMU bug 7): the
    // qemu-img cross-check runs on these.
    {"no_backing_ts2", 2, backing_kind::none, 13, 3, 6, false, 5},
    {"raw_backing_ts2", 2, backing_kind::raw, 13, 3, 6},
    // NEED_CHECK cleared by the timer between allocations, set again by the next.
    {"no_backing_ts1_timer", 1, backing_kind::none, 14, 3, 0, false, 4, true},
    {"no_backing_ts1_timer_reordered", 1, backing_kind::none, 15, 8, 0, false, 0, true},
    // Only the allocate-then-overwrite-then-flush races, in several orders.
    {"race_no_backing_a", 1, backing_kind::none, 21, 4, 0, true},
    {"race_no_backing_b", 1, backing_kind::none, 22, 6, 0, true},
    {"race_no_backing_c", 1, backing_kind::none, 25, 10, 0, true},
    {"race_no_backing_d", 1, backing_kind::none, 26, 10, 0, true},
    {"race_raw_backing_a", 1, backing_kind::raw, 23, 4, 0, true},
    {"race_raw_backing_b", 1, backing_kind::raw, 24, 6, 0, true},
    {"race_raw_backing_c", 1, backing_kind::raw, 27, 10, 0, true},
    {"race_raw_backing_d", 1, backing_kind::raw, 28, 10, 0, true},
    // table_size 4 (16 KiB tables, 32 sectors): a new L2 table lies in fresh
    // space, so only its sectors holding entries are written and the file is
    // extended past it; L1 may link it only once both are flushed.
    {"no_backing_ts4_sparse_new_tables", 4, backing_kind::none, 41, 3, 0, false, 3},
    {"raw_backing_ts4_sparse_new_tables", 4, backing_kind::raw, 42, 5, 0},
    // On fixed-size storage (an NBD export) full of old bytes: create writes
    // the L1 table as zeros before the header, open finds the end of the
    // data from the tables, new clusters are written whole, clusters written
    // but not linked before the crash are reused.
    {"fixed_no_backing_ts1", 1, backing_kind::none, 31, 3, 0, false, 3, false, true},
    {"fixed_raw_backing_ts1_reordered", 1, backing_kind::raw, 32, 8, 0, false, 0, false, true},
    {"fixed_no_backing_ts1_timer", 1, backing_kind::none, 33, 5, 0, false, 4, true, true},
};

// ---------------------------------------------------------------------------
// The guest workload
// ---------------------------------------------------------------------------

struct guest_op {
    enum kind { write, zeroes, flush, read } what = write;
    std::uint64_t off = 0, len = 0;
    bool fua = false;
    bool may_unmap = true;
    std::uint64_t tag = 0;
    std::vector<std::uint8_t> data;  // what a write puts there
};

struct script {
    std::uint64_t span = 0;  // guest bytes per L2 table
    std::uint64_t size = 0;
    std::vector<guest_op> ops;
    std::vector<std::vector<std::size_t>> streams;     // each runs its ops one after another
    std::vector<unsigned> phase;                       // per stream: phases run one after another
    std::vector<std::vector<std::uint32_t>> touching;  // sector -> writes/zeroes touching it, by op index
    std::vector<std::uint8_t> initial;                 // guest contents before the workload
};

script make_script(const workload& w) {
    script sc;
    sc.span = std::uint64_t{cs} * cs * w.table_size / 8;
    sc.size = 4 * sc.span;
    const std::uint64_t span = sc.span;
    std::uint64_t next_tag = 100;
    auto add = [&](std::size_t stream, guest_op o) {
        if (sc.streams.size() <= stream) sc.streams.resize(stream + 1);
        if (o.what == guest_op::write) {
            o.tag = next_tag++;
            o.data.resize(o.len);
            for (std::uint64_t s = 0; s < o.len / 512; ++s) fill_sector(&o.data[s * 512], o.tag, o.off / 512 + s);
        }
        sc.streams[stream].push_back(sc.ops.size());
        sc.ops.push_back(std::move(o));
    };
    auto W = [&](std::size_t s, std::uint64_t off, std::uint64_t len, bool fua = false) {
        guest_op o;
        o.what = guest_op::write;
        o.off = off;
        o.len = len;
        o.fua = fua;
        add(s, std::move(o));
    };
    auto Z = [&](std::size_t s, std::uint64_t off, std::uint64_t len, bool unmap = true) {
        guest_op o;
        o.what = guest_op::zeroes;
        o.off = off;
        o.len = len;
        o.may_unmap = unmap;
        add(s, std::move(o));
    };
    auto F = [&](std::size_t s) {
        guest_op o;
        o.what = guest_op::flush;
        add(s, std::move(o));
    };
    auto R = [&](std::size_t s, std::uint64_t off, std::uint64_t len) {
        guest_op o;
        o.what = guest_op::read;
        o.off = off;
        o.len = len;
        add(s, std::move(o));
    };

    if (!w.race_only) {
        // Stream 0: partial clusters, a new L2 table, overwrites, flushes.
        W(0, 0, 512);
        W(0, cs + 1024, 2 * cs);
        F(0);
        W(0, span - cs, 2 * cs);    // crosses into the second L2 table
        Z(0, 16 * cs + 512, 1024);  // unaligned write-zeroes
        W(0, 0, 8 * cs);            // overwrite in place + allocation
        F(0);
        W(0, 3 * span + 5 * cs, cs);  // fourth table
        // Stream 1: same clusters as stream 0, other sectors; zero clusters.
        W(1, 512, 512);
        W(1, 2 * cs + 2048, 2048);
        Z(1, 2 * span, 4 * cs);           // zero clusters in a new table
        W(1, 2 * span + cs + 512, 1024);  // partial write into a zero cluster
        F(1);
        W(1, 40 * cs, 8 * cs, true);  // FUA, a run of clusters
        Z(1, 3 * cs, cs, false);      // NO_HOLE zeroes over an allocated cluster
        // Stream 2: reads, writes racing with the others, write-zeroes in place.
        R(2, 0, 16 * cs);
        W(2, 3 * span, 3 * cs + 512);
        Z(2, 40 * cs, 16 * cs);  // over the FUA run (or before it)
        W(2, span + 100 * cs, cs);
        F(2);
        Z(2, span + 100 * cs, cs, false);
        W(2, 3 * span + 5 * cs, 512);
        // Stream 3: big writes and a write-zeroes crossing an L2 boundary.
        W(3, span + 8 * cs, 24 * cs);
        Z(3, 2 * span - 2 * cs, 4 * cs);
        W(3, 60 * cs, 4 * cs, true);
        R(3, span - 4 * cs, 8 * cs);
        W(3, 2 * span - cs, 512);
        // Streams 4..11: a burst of requests in flight at once (seeded).
        std::mt19937_64 rng(w.table_size * 1000 + w.hop_seed);
        for (std::size_t s = 4; s < 12; ++s) {
            for (int i = 0; i < 2; ++i) {
                const std::uint64_t len = 512 * (1 + rng() % (3 * cs / 512));
                const std::uint64_t zone = (rng() % 4) * span + (rng() % 2) * (span / 2);
                const std::uint64_t off = std::min(zone + (rng() % (64 * cs / 512)) * 512, sc.size - len);
                if (rng() % 5 == 0)
                    Z(s, off / cs * cs, cs, rng() % 2);
                else
                    W(s, off, len);
            }
            if (s % 3 == 0) F(s);
        }
    }

    // Then pairs of streams: a write allocating a cluster races with a
    // write to another sector of the same cluster followed by a flush: the
    // flush must cover the second write even if it went in place while the
    // first one's L2 update was still on its way.
    // (race_only: one pair per phase, the second write after 0, 1, 2...
    // reads, so that some of them arrive while the first one's batch is
    // updating its tables.)
    const std::size_t rs = sc.streams.size();
    sc.phase.resize(rs, 0);
    const std::uint64_t pairs = w.race_only ? 16 : 8;
    for (std::uint64_t i = 0; i < pairs; ++i) {
        const std::uint64_t x = (i % 2 ? span : 0) + (200 + 3 * i) * cs;
        W(rs + 2 * i, x, 512);
        for (std::uint64_t r = 0; r <= i; ++r) R(rs + 2 * i + 1, r % 2 ? x + 1024 : 0, 512);  // spread the timing
        W(rs + 2 * i + 1, x + 2048, 512);
        F(rs + 2 * i + 1);
        sc.phase.resize(rs + 2 * i + 2, w.race_only ? static_cast<unsigned>(i) : 0);
    }

    sc.touching.resize(sc.size / 512);
    for (std::size_t i = 0; i < sc.ops.size(); ++i) {
        const auto& o = sc.ops[i];
        if (o.what != guest_op::write && o.what != guest_op::zeroes) continue;
        for (std::uint64_t s = o.off / 512; s < (o.off + o.len) / 512; ++s)
            sc.touching[s].push_back(static_cast<std::uint32_t>(i));
    }
    return sc;
}

// ---------------------------------------------------------------------------
// Images: the fresh top image and its backing file
// ---------------------------------------------------------------------------

struct images {
    bool fixed = false;                   // top is on fixed-size storage (fixed_size_file)
    std::shared_ptr<memory_storage> top;  // as created (clean)
    std::string base_name;                // "" without backing
    std::shared_ptr<memory_storage> base;
};

images make_images(const workload& w, script& sc) {
    boost::asio::io_context ioc;
    memory_fs fs{ioc.get_executor()};
    images im;
    sc.initial.assign(sc.size, 0);
    create_options co;
    co.size = sc.size;
    co.cluster_size = cs;
    co.table_size = w.table_size;
    co.opener = fs.opener();
    auto put_base = [&](std::uint64_t off, std::uint64_t len, auto&& write) {
        std::vector<std::uint8_t> buf(len);
        for (std::uint64_t s = 0; s < len / 512; ++s) fill_sector(&buf[s * 512], backing_tag, off / 512 + s);
        write(off, buf);
        std::copy(buf.begin(), buf.end(), sc.initial.begin() + static_cast<std::ptrdiff_t>(off));
    };
    if (w.backing == backing_kind::raw) {
        // Distinct data everywhere but the last L2 table: shorter than the
        // image, so reads and prefills also cross its end.
        im.base_name = "base.raw";
        auto& st = fs.storage(im.base_name);
        put_base(0, 3 * sc.span + 3 * cs + 1024, [&](std::uint64_t off, const std::vector<std::uint8_t>& b) {
            st->write(off, {reinterpret_cast<const std::byte*>(b.data()), b.size()});
        });
        co.backing_file = im.base_name;
        co.backing_format = image_format::raw;
    } else if (w.backing == backing_kind::qed) {
        // A QED base: data, a zero-cluster range, unallocated holes.
        im.base_name = "base.qed";
        create_options bo;
        bo.size = sc.size;
        bo.cluster_size = cs;
        bo.table_size = w.table_size;
        bo.opener = fs.opener();
        BOOST_REQUIRE(!create(ioc, im.base_name, bo));
        open_options oo;
        oo.opener = fs.opener();
        auto [ec, base] = open(ioc, im.base_name, oo);
        BOOST_REQUIRE(!ec);
        auto wr = [&](std::uint64_t off, const std::vector<std::uint8_t>& b) {
            BOOST_REQUIRE(!base.write(off, b.data(), b.size()));
        };
        put_base(0, 3 * sc.span / 2, wr);
        put_base(2 * sc.span - 64 * cs, 64 * cs + 4 * cs, wr);
        put_base(3 * sc.span, 8 * cs, wr);
        BOOST_REQUIRE(!base.write_zeroes(4 * cs, 4 * cs));  // zero clusters in the base
        std::fill(sc.initial.begin() + 4 * cs, sc.initial.begin() + 8 * cs, 0);
        BOOST_REQUIRE(!base.close());
        co.backing_file = im.base_name;
        co.backing_format = image_format::qed;
    }
    im.fixed = w.fixed;
    if (w.fixed) {
        // Storage of fixed capacity, room for every cluster the workload
        // allocates, holding old bytes everywhere: sectors of another
        // guest's data (tag 99), so any byte of a new cluster not written
        // whole, or a stale table entry, shows.
        auto& st = fs.storage("top.qed");
        const std::uint64_t capacity = sc.size + 64 * cs * std::uint64_t{w.table_size} + 64 * cs;
        std::vector<std::uint8_t> junk(capacity);
        for (std::uint64_t s = 0; s < capacity / 512; ++s) fill_sector(&junk[s * 512], 99, s);
        st->write(0, {reinterpret_cast<const std::byte*>(junk.data()), junk.size()});
        co.opener = [inner = fs.opener()](const std::string& path, const file_options& o,
                                          std::error_code& ec) -> std::shared_ptr<block_file> {
            if (path != "top.qed") return inner(path, o, ec);
            // Open without create: an export is never truncated.
            file_options keep = o;
            keep.create = false;
            auto f = inner(path, keep, ec);
            return f ? std::make_shared<fixed_size_file>(std::move(f)) : nullptr;
        };
    }
    BOOST_REQUIRE(!create(ioc, "top.qed", co));
    im.top = fs.storage("top.qed")->clone();
    if (!im.base_name.empty()) im.base = fs.storage(im.base_name);
    return im;
}

// ---------------------------------------------------------------------------
// One run of the workload, with the power failing at I/O `cut_at`
// ---------------------------------------------------------------------------

struct op_record {
    bool issued = false, done = false, ok = false;
    std::uint64_t issue_ev = 0, complete_ev = 0;
};

struct run_result {
    std::shared_ptr<power_loss_state> st;
    std::vector<op_record> rec;
    std::uint64_t close_issue_ev = 0;
    bool close_ok = false;
    bool hang = false;
    std::string hang_detail;
};

constexpr std::chrono::hours never{1};  // the need-check timer must not make runs time dependent

run_result run_workload(const workload& w, const script& sc, const images& im, std::int64_t cut_at) {
    run_result res;
    res.st = std::make_shared<power_loss_state>();
    res.st->cut_at = cut_at;
    res.st->rng.seed(w.hop_seed);
    res.st->max_hops = w.max_hops;
    res.rec.resize(sc.ops.size());

    boost::asio::io_context ioc;
    memory_fs fs{ioc.get_executor()};
    fs.storage("top.qed") = im.top->clone();
    if (im.base) fs.storage(im.base_name) = im.base;
    auto st = res.st;
    fs.wrap = [&fs, st, fixed = im.fixed](std::shared_ptr<block_file> f,
                                          const std::string& path) -> std::shared_ptr<block_file> {
        if (path != "top.qed") return f;
        auto pl = std::make_shared<power_loss_file>(std::move(f), *fs.storage("top.qed"), st);
        if (fixed) return std::make_shared<fixed_size_file>(std::move(pl));
        return pl;
    };
    open_options oo;
    oo.opener = fs.opener();
    oo.l2_cache_size = 2;  // evictions and reloads: more I/O, more crash points
    // Normally never (runs must not depend on time); at 0 ms the timer fires
    // as soon as the allocation queue drains, in the order of the handlers.
    oo.need_check_timeout = w.timer ? std::chrono::milliseconds(0) : std::chrono::milliseconds(never);
    auto [oec, img] = open(ioc, "top.qed", oo);
    if (oec) return res;  // power failed during open: nothing was written

    std::uint64_t ev = 0;
    std::size_t streams_done = 0;
    // Phases run one after another; the streams of a phase run together.
    unsigned phase = 0;
    std::size_t phase_left = 0;
    bool stopped = false;  // a request failed: the disk is gone, no new phase
    std::function<void(std::size_t, std::size_t)> issue;
    std::function<void()> next_phase = [&] {
        const unsigned last = *std::max_element(sc.phase.begin(), sc.phase.end());
        while (phase_left == 0 && phase <= last) {
            for (std::size_t s = 0; s < sc.streams.size(); ++s)
                if (sc.phase[s] == phase) ++phase_left;
            const unsigned cur = phase++;
            for (std::size_t s = 0; s < sc.streams.size(); ++s)
                if (sc.phase[s] == cur) issue(s, 0);
        }
    };
    auto stream_done = [&] {
        ++streams_done;
        if (--phase_left == 0 && !stopped) next_phase();
    };
    std::vector<std::vector<std::uint8_t>> read_bufs(sc.ops.size());
    issue = [&](std::size_t s, std::size_t p) {
        if (p >= sc.streams[s].size()) return stream_done();
        const std::size_t i = sc.streams[s][p];
        const guest_op& o = sc.ops[i];
        res.rec[i].issued = true;
        res.rec[i].issue_ev = ++ev;
        auto done = [&, s, p, i](std::error_code ec, auto&&...) {
            res.rec[i].done = true;
            res.rec[i].ok = !ec;
            res.rec[i].complete_ev = ++ev;
            if (ec) {
                stopped = true;  // the disk is gone: this stream stops, no new phase starts
                return stream_done();
            }
            issue(s, p + 1);
        };
        switch (o.what) {
            case guest_op::write:
                img.img.async_write_at(o.off, boost::asio::buffer(o.data), write_options{o.fua}, done);
                break;
            case guest_op::zeroes:
                img.img.async_write_zeroes(o.off, o.len, zero_options{o.may_unmap, false}, done);
                break;
            case guest_op::flush:
                img.img.async_flush(done);
                break;
            case guest_op::read:
                read_bufs[i].resize(o.len);
                img.img.async_read_at(o.off, boost::asio::buffer(read_bufs[i]), done);
                break;
        }
    };
    next_phase();
    auto all_done = [&] { return phase_left == 0 && (stopped || streams_done == sc.streams.size()); };
    if (!run_until(ioc, all_done, std::chrono::seconds(20))) {
        res.hang = true;
        res.hang_detail = "requests never completed";
        return res;
    }
    res.close_issue_ev = ++ev;
    bool closed = false;
    img.img.async_close([&](std::error_code ec) {
        closed = true;
        res.close_ok = !ec;
    });
    if (!run_until(
            ioc, [&] { return closed; }, std::chrono::seconds(20))) {
        res.hang = true;
        res.hang_detail = "close never completed";
        return res;
    }
    img.img = image{};
    ioc.restart();
    ioc.poll();
    return res;
}

// ---------------------------------------------------------------------------
// What each sector may hold after the crash
// ---------------------------------------------------------------------------

struct legal_values {
    std::vector<std::uint64_t> issue_ev;
    std::vector<std::uint64_t> complete_ev;  // ~0 when never completed
    std::vector<bool> durable;
    std::vector<bool> issued;

    legal_values(const script& sc, const run_result& r) {
        const std::uint64_t inf = ~std::uint64_t{0};
        std::uint64_t flushed_before = 0;  // writes completed before this event are durable
        for (std::size_t i = 0; i < sc.ops.size(); ++i)
            if (sc.ops[i].what == guest_op::flush && r.rec[i].ok)
                flushed_before = std::max(flushed_before, r.rec[i].issue_ev);
        if (r.close_ok) flushed_before = std::max(flushed_before, r.close_issue_ev);
        complete_ev.resize(sc.ops.size(), inf);
        durable.resize(sc.ops.size(), false);
        issued.resize(sc.ops.size(), false);
        issue_ev.resize(sc.ops.size(), 0);
        for (std::size_t i = 0; i < sc.ops.size(); ++i) {
            issued[i] = r.rec[i].issued;
            issue_ev[i] = r.rec[i].issue_ev;
            if (r.rec[i].ok) complete_ev[i] = r.rec[i].complete_ev;
            durable[i] = r.rec[i].ok && (sc.ops[i].fua || r.rec[i].complete_ev < flushed_before);
        }
    }

    /// The candidates for one sector: op indices, and whether its old value is allowed.
    void of_sector(const script& sc, std::uint64_t s, std::vector<std::uint32_t>& ops, bool& old_ok) const {
        ops.clear();
        std::uint64_t latest_durable_issue = 0;
        bool any_durable = false;
        for (auto i : sc.touching[s]) {
            if (!durable[i]) continue;
            any_durable = true;
            latest_durable_issue = std::max(latest_durable_issue, issue_ev[i]);
        }
        old_ok = !any_durable;
        for (auto i : sc.touching[s]) {
            if (!issued[i]) continue;
            // Overwritten for sure by a durable write issued after this one completed?
            if (any_durable && complete_ev[i] < latest_durable_issue) continue;
            ops.push_back(i);
        }
    }
};

// ---------------------------------------------------------------------------
// Keep-policies: which unflushed operations land
// ---------------------------------------------------------------------------

struct policy {
    std::string name;
    std::vector<kept_op> keep;
};

std::vector<policy> policies_for(const power_loss_state& st) {
    std::vector<policy> out;
    const std::size_t n = st.log.size();
    std::set<std::string> seen;
    auto push = [&](std::string name, std::vector<kept_op> keep) {
        std::string sig;
        for (const auto& k : keep) {
            sig += std::to_string(k.index) + (k.sectors.empty() ? "" : ":");
            for (bool b : k.sectors) sig += b ? '1' : '0';
            sig += ',';
        }
        if (!seen.insert(sig).second) return;
        out.push_back({std::move(name), std::move(keep)});
    };
    auto prefix = [&](std::size_t j) {
        std::vector<kept_op> k;
        for (std::size_t i = 0; i < j; ++i) k.push_back({i, {}});
        return k;
    };
    push("none", {});
    push("all", prefix(n));
    for (std::size_t j : {std::size_t{1}, n / 2, n > 0 ? n - 1 : 0})
        if (j > 0 && j < n) push("prefix " + std::to_string(j), prefix(j));
    for (unsigned seed = 1; seed <= 3; ++seed) {
        std::mt19937 rng(seed * 7919 + static_cast<unsigned>(n));
        std::vector<kept_op> k;
        for (std::size_t i = 0; i < n; ++i)
            if (rng() % 2) k.push_back({i, {}});
        push("random " + std::to_string(seed), std::move(k));
    }
    std::vector<std::size_t> tearable;
    for (std::size_t i = 0; i < n; ++i)
        if (power_loss_state::pieces(st.log[i]) > 1) tearable.push_back(i);
    // Torn writes: the sectors of one write land in part -- its first
    // half, its second half, or a random selection -- with all, or a
    // random subset, of the other operations.
    for (unsigned seed = 1; seed <= 3 && !tearable.empty(); ++seed) {
        std::mt19937 rng(seed * 104729 + static_cast<unsigned>(n));
        const std::size_t victim = tearable[rng() % tearable.size()];
        const std::size_t pieces = power_loss_state::pieces(st.log[victim]);
        std::vector<bool> sectors(pieces);
        const char* how = "";
        if (seed == 1) {
            for (std::size_t i = 0; i < pieces; ++i) sectors[i] = i < (pieces + 1) / 2;
            how = "first half";
        } else if (seed == 2) {
            for (std::size_t i = 0; i < pieces; ++i) sectors[i] = i >= pieces / 2;
            how = "second half";
        } else {
            for (std::size_t i = 0; i < pieces; ++i) sectors[i] = rng() % 2;
            sectors[rng() % pieces] = true;  // some sectors land...
            const std::size_t drop = rng() % pieces;
            sectors[drop] = false;  // ...and some don't
            if (std::find(sectors.begin(), sectors.end(), true) == sectors.end()) sectors[(drop + 1) % pieces] = true;
            how = "random sectors";
        }
        std::vector<kept_op> k;
        for (std::size_t i = 0; i < n; ++i) {
            if (i == victim)
                k.push_back({i, sectors});
            else if (seed != 2 || rng() % 2)
                k.push_back({i, {}});
        }
        push("torn " + std::to_string(seed) + " (" + how + " of the write at " + std::to_string(st.log[victim].offset) +
                 ")",
             std::move(k));
    }
    return out;
}

// ---------------------------------------------------------------------------
// Verification of one post-crash image
// ---------------------------------------------------------------------------

struct totals {
    std::uint64_t ios = 0;
    std::uint64_t crash_points = 0;
    std::uint64_t images = 0;
    std::map<std::string, std::uint64_t> by_policy;
    std::uint64_t dirty_images = 0;
    std::uint64_t repaired_entries = 0;
    std::uint64_t qemu_checks = 0;
    std::uint64_t failures = 0;
    std::uint64_t second_crash_points = 0;
    std::uint64_t second_images = 0;
};

std::string describe_sector(const script& sc, const std::uint8_t* p, std::uint64_t s) {
    static const std::uint8_t zeros[512] = {};
    if (!std::memcmp(p, zeros, 512)) return "zeros";
    if (!std::memcmp(p, &sc.initial[s * 512], 512)) return "its old value";
    for (auto i : sc.touching[s]) {
        const auto& o = sc.ops[i];
        if (o.what == guest_op::write && !std::memcmp(p, &o.data[(s - o.off / 512) * 512], 512))
            return "data of op " + std::to_string(i);
    }
    return model::describe(p, s, 200);
}

std::string describe_sector_bytes(const std::uint8_t* p, std::uint64_t s, const std::vector<std::uint8_t>& base,
                                  bool backing) {
    static const std::uint8_t zeros[512] = {};
    if (!std::memcmp(p, zeros, 512)) return "zeros";
    if (backing && s * 512 + 512 <= base.size() && !std::memcmp(p, &base[s * 512], 512))
        return "the backing file's data";
    return model::describe(p, s, 100);
}

std::string candidates_text(const script& sc, const std::vector<std::uint32_t>& ops, bool old_ok, std::uint64_t s) {
    std::ostringstream os;
    if (old_ok)
        os << "old value ("
           << (std::all_of(&sc.initial[s * 512], &sc.initial[s * 512] + 512, [](std::uint8_t b) { return b == 0; })
                   ? "zeros"
                   : "backing data")
           << ") ";
    for (auto i : ops) {
        const auto& o = sc.ops[i];
        os << "op " << i << " (" << (o.what == guest_op::write ? "write" : "zeroes") << " " << o.off << "+" << o.len
           << ") ";
    }
    return os.str();
}

/// Open the post-crash image, verify it, close it. Returns "" or what failed.
/// `qemu` (optional) runs qemu-img check on the repaired image.
std::string verify_image(const script& sc, const images& im, const legal_values& lv,
                         std::shared_ptr<memory_storage> top, bool qemu, totals& t, bool count_dirty) {
    boost::asio::io_context ioc;
    memory_fs fs{ioc.get_executor()};
    fs.storage("top.qed") = top;
    if (im.base) fs.storage(im.base_name) = im.base;
    if (im.fixed)
        fs.wrap = [](std::shared_ptr<block_file> f, const std::string& path) -> std::shared_ptr<block_file> {
            if (path != "top.qed") return f;
            return std::make_shared<fixed_size_file>(std::move(f));
        };
    const bool dirty = header_of(bytes_of(*top)).has(feature_need_check);
    if (count_dirty && dirty) ++t.dirty_images;
    std::vector<std::string> log;
    open_options oo;
    oo.opener = fs.opener();
    oo.need_check_timeout = never;
    oo.log = [&log](std::string_view l) { log.emplace_back(l); };
    auto [ec, img] = open(ioc, "top.qed", oo);
    if (ec) {
        std::string all;
        for (auto& l : log) all += " | " + l;
        return "reopen failed: " + ec.message() + all;
    }
    for (auto& l : log)
        if (l.find("repaired") != std::string::npos && count_dirty) ++t.repaired_entries;

    // Every sector against its legal values.
    constexpr std::uint64_t chunk = 256 * 1024;
    std::vector<std::uint8_t> buf(chunk);
    std::vector<std::uint32_t> cand;
    static const std::uint8_t zeros[512] = {};
    for (std::uint64_t off = 0; off < sc.size; off += chunk) {
        if (auto rec = img.read(off, buf.data(), chunk)) return "read at " + std::to_string(off) + ": " + rec.message();
        for (std::uint64_t s = off / 512; s < (off + chunk) / 512; ++s) {
            const std::uint8_t* p = &buf[(s - off / 512) * 512];
            bool old_ok = true;
            lv.of_sector(sc, s, cand, old_ok);
            bool ok = old_ok && !std::memcmp(p, &sc.initial[s * 512], 512);
            for (std::size_t c = 0; !ok && c < cand.size(); ++c) {
                const auto& o = sc.ops[cand[c]];
                ok = o.what == guest_op::zeroes ? !std::memcmp(p, zeros, 512)
                                                : !std::memcmp(p, &o.data[(s - o.off / 512) * 512], 512);
            }
            if (!ok)
                return "sector " + std::to_string(s) + " (guest offset " + std::to_string(s * 512) + ") holds " +
                       describe_sector(sc, p, s) + "; allowed: " + candidates_text(sc, cand, old_ok, s);
        }
    }

    auto [cec, cr] = img.check();
    if (cec) return "check failed: " + cec.message();
    if (cr.corruptions || cr.check_errors) {
        std::string m;
        for (auto& l : cr.messages) m += " | " + l;
        return "check after reopen: " + std::to_string(cr.corruptions) + " corruptions, " +
               std::to_string(cr.check_errors) + " check errors" + m;
    }
    if (auto cl = img.close()) return "close failed: " + cl.message();

    const auto bytes = bytes_of(*top);
    const layout_report lr = inspect_layout(bytes);
    if (!lr.clean()) {
        std::string m;
        for (auto& l : lr.problems) m += " | " + l;
        return "independent table walk:" + m;
    }
    if (header_of(bytes).has(feature_need_check)) return "NEED_CHECK still set after a clean close";

    if (qemu) {
        tmp_dir d("power_loss");
        pwrite_file(d / "top.qed", 0, bytes.data(), bytes.size());
        if (im.base) {
            const auto b = bytes_of(*im.base);
            pwrite_file(d / im.base_name, 0, b.data(), b.size());
        }
        const auto r = qemu_img(d.path(), "check -f qed --output=json top.qed");
        ++t.qemu_checks;
        if ((r.exit_code != 0 && r.exit_code != 3) || check_json_field(r.output, "corruptions") != 0 ||
            check_json_field(r.output, "check-errors") != 0)
            return "qemu-img check (exit " + std::to_string(r.exit_code) + "): " + r.output;
    }
    return {};
}

/// Power fails again, at every I/O of the reopen that repairs `first`;
/// each image after that second crash must still reopen and verify.
std::string crash_during_repair(const script& sc, const images& im, const legal_values& lv,
                                const std::shared_ptr<memory_storage>& first, totals& t) {
    auto reopen_with_cut = [&](std::int64_t cut) {
        auto st = std::make_shared<power_loss_state>();
        st->cut_at = cut;
        boost::asio::io_context ioc;
        memory_fs fs{ioc.get_executor()};
        fs.storage("top.qed") = first->clone();
        if (im.base) fs.storage(im.base_name) = im.base;
        fs.wrap = [&fs, st, fixed = im.fixed](std::shared_ptr<block_file> f,
                                              const std::string& path) -> std::shared_ptr<block_file> {
            if (path != "top.qed") return f;
            auto pl = std::make_shared<power_loss_file>(std::move(f), *fs.storage("top.qed"), st);
            if (fixed) return std::make_shared<fixed_size_file>(std::move(pl));
            return pl;
        };
        open_options oo;
        oo.opener = fs.opener();
        oo.need_check_timeout = never;
        auto [ec, img] = open(ioc, "top.qed", oo);
        img.img = image{};
        ioc.restart();
        ioc.poll();
        return st;
    };
    const std::uint64_t n = reopen_with_cut(-1)->submitted;  // I/Os of the open, check and repair
    for (std::uint64_t j = 0; j < n; ++j) {
        const auto st = reopen_with_cut(static_cast<std::int64_t>(j));
        ++t.second_crash_points;
        for (const auto& p : policies_for(*st)) {
            if (p.name != "none" && p.name != "all" && p.name != "random 1" && p.name.rfind("torn 1", 0) != 0) continue;
            ++t.second_images;
            const std::string err = verify_image(sc, im, lv, st->image_after(p.keep), false, t, false);
            if (!err.empty())
                return "second power loss at I/O " + std::to_string(j) + " of the repairing open, kept " + p.name +
                       ": " + err;
        }
    }
    return {};
}

std::int64_t env_int(const char* name, std::int64_t dflt) {
    const char* v = std::getenv(name);
    return v && *v ? std::strtoll(v, nullptr, 0) : dflt;
}

bool selected(const workload& w) {
    const char* only = std::getenv("QED_PL_WORKLOAD");
    return !only || !*only || std::string(only) == w.name;
}

void report(const workload& w, const totals& t) {
    std::ostringstream os;
    os << w.name << ": " << t.ios << " I/Os in the workload, " << t.crash_points << " crash points, " << t.images
       << " post-crash images verified (";
    bool first = true;
    for (const auto& [p, n] : t.by_policy) {
        os << (first ? "" : ", ") << p << " " << n;
        first = false;
    }
    os << "), " << t.dirty_images << " needed repair (" << t.repaired_entries << " with invalid entries cleared), "
       << t.qemu_checks << " qemu-img checks, " << t.failures << " failures";
    if (t.second_crash_points)
        os << "; crash during repair: " << t.second_crash_points << " crash points, " << t.second_images << " images";
    BOOST_TEST_MESSAGE(os.str());
}

totals grand;  // over every workload run in this process

std::string policy_kind(const std::string& name) {
    return name.substr(0, name.find(' '));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(power_loss)

BOOST_DATA_TEST_CASE(crash_at_every_io, bdata::make(workloads), w) {
    if (!selected(w)) return;
    const bool qemu = w.qemu_every && qemu_available();
    if (w.qemu_every && !qemu) BOOST_TEST_MESSAGE(w.name << ": qemu-img not available, cross-check skipped");
    script sc = make_script(w);
    const images im = make_images(w, sc);

    // The whole workload without a crash: how many I/Os it does.
    const run_result full = run_workload(w, sc, im, -1);
    BOOST_REQUIRE_MESSAGE(!full.hang, w.name << ": " << full.hang_detail);
    for (std::size_t i = 0; i < sc.ops.size(); ++i) BOOST_REQUIRE_MESSAGE(full.rec[i].ok, "op " << i << " failed");
    BOOST_REQUIRE(full.close_ok);
    totals t;
    t.ios = full.st->submitted;

    const std::int64_t only = env_int("QED_PL_CRASH", -1);
    const auto start = std::chrono::steady_clock::now();
    for (std::int64_t k = 0; k < static_cast<std::int64_t>(t.ios); ++k) {
        if (only >= 0 && k != only) continue;
        const run_result r = run_workload(w, sc, im, k);
        ++t.crash_points;
        if (r.hang) {
            ++t.failures;
            BOOST_ERROR(w.name << " crash at I/O " << k << ": " << r.hang_detail);
            continue;
        }
        BOOST_REQUIRE(r.st->crashed);
        const legal_values lv(sc, r);
        const auto pols = policies_for(*r.st);
        for (const auto& p : pols) {
            const bool q = qemu && k % w.qemu_every == 0 && (p.name == "all" || p.name == "random 1");
            const std::string err = verify_image(sc, im, lv, r.st->image_after(p.keep), q, t, true);
            ++t.images;
            ++t.by_policy[policy_kind(p.name)];
            if (!err.empty()) {
                ++t.failures;
                if (t.failures <= 5)
                    BOOST_ERROR(w.name << ": power lost at I/O " << k << " of " << t.ios << ", kept " << p.name
                                       << " of " << r.st->log.size() << " unflushed ops: " << err);
                continue;
            }
            // Sampled: power fails again while the reopen repairs the image.
            if (w.second_crash_every && k % w.second_crash_every == 0 && (p.name == "all" || p.name == "random 1")) {
                const auto first = r.st->image_after(p.keep);
                if (!header_of(bytes_of(*first)).has(feature_need_check)) continue;
                const std::string err2 = crash_during_repair(sc, im, lv, first, t);
                if (!err2.empty()) {
                    ++t.failures;
                    if (t.failures <= 5)
                        BOOST_ERROR(w.name << ": power lost at I/O " << k << ", kept " << p.name << "; " << err2);
                }
            }
        }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report(w, t);
    BOOST_TEST_MESSAGE(w.name << ": " << secs << " s");
    grand.ios += t.ios;
    grand.crash_points += t.crash_points;
    grand.images += t.images;
    for (const auto& [p, n] : t.by_policy) grand.by_policy[p] += n;
    grand.dirty_images += t.dirty_images;
    grand.repaired_entries += t.repaired_entries;
    grand.qemu_checks += t.qemu_checks;
    grand.failures += t.failures;
    grand.second_crash_points += t.second_crash_points;
    grand.second_images += t.second_images;
    BOOST_CHECK_EQUAL(t.failures, 0u);
    BOOST_CHECK(t.crash_points > 0);
}

BOOST_AUTO_TEST_CASE(summary) {
    static const workload all{"all workloads", 0, backing_kind::none, 0, 0, 0};
    report(all, grand);
    BOOST_CHECK(true);
}

// ---------------------------------------------------------------------------
// One race, step by step: a metadata write held in flight
// ---------------------------------------------------------------------------
//
// W1 allocates a cluster; its L2 update (existing table) or L1 update (new
// table) reaches the file but does not complete yet. Meanwhile W2 writes
// another sector of the same cluster -- in place, since memory already
// links the cluster -- and a flush (or W2's FUA) completes. Power fails.
// W2 was acknowledged as durable, so it must read back: either the flush
// waits for the link to be durable, or W2 waits for it, or the data is
// reachable some other way.

/// Shared set-up of the race tests: an image with table_size 1 (over a raw
/// backing file of two L2 spans when asked), opened through a
/// power_loss_file, with sector 0 written and flushed so that the first L2
/// table exists and is durable.
struct race_fixture {
    static constexpr std::uint64_t span = std::uint64_t{cs} * cs / 8;  // table_size 1
    boost::asio::io_context ioc;
    memory_fs fs{ioc.get_executor()};
    std::vector<std::uint8_t> base;
    std::shared_ptr<power_loss_state> st = std::make_shared<power_loss_state>();
    std::optional<sync_image> img;
    std::uint64_t l1 = 0;  ///< the L1 table's offset
    std::uint64_t l2 = 0;  ///< the first L2 table's offset

    explicit race_fixture(bool backing) : base(2 * span) {
        create_options co;
        co.size = 4 * span;
        co.cluster_size = cs;
        co.table_size = 1;
        co.opener = fs.opener();
        if (backing) {
            for (std::uint64_t s = 0; s < base.size() / 512; ++s) fill_sector(&base[s * 512], backing_tag, s);
            fs.storage("base.raw")->write(0, {reinterpret_cast<const std::byte*>(base.data()), base.size()});
            co.backing_file = "base.raw";
            co.backing_format = image_format::raw;
        }
        BOOST_REQUIRE(!create(ioc, "top.qed", co));
        fs.wrap = [this](std::shared_ptr<block_file> f, const std::string& path) -> std::shared_ptr<block_file> {
            if (path != "top.qed") return f;
            return std::make_shared<power_loss_file>(std::move(f), *fs.storage("top.qed"), st);
        };
        open_options oo;
        oo.opener = fs.opener();
        oo.need_check_timeout = never;
        auto [oec, opened] = open(ioc, "top.qed", oo);
        BOOST_REQUIRE(!oec);
        img.emplace(std::move(opened));
        std::vector<std::uint8_t> first(512);
        fill_sector(first.data(), 50, 0);
        BOOST_REQUIRE(!img->write(0, first.data(), first.size()));
        BOOST_REQUIRE(!img->flush());
        const auto now = bytes_of(*fs.storage("top.qed"));
        l1 = header_of(now).l1_table_offset;
        l2 = get_u64(now, l1);
        BOOST_REQUIRE(l2 != 0);
    }

    /// Run every handler that is ready, until `done` or nothing is left to
    /// run (memory files complete at once; held writes and the hour-long
    /// need-check timer don't count): deterministic, no clock involved.
    template <class Pred>
    void idle(Pred done) {
        ioc.restart();
        while (!done() && ioc.poll() != 0) ioc.restart();
    }
    void idle() {
        idle([] { return false; });
    }

    /// Drop the image without closing it (the power has failed).
    void drop() {
        img->img = image{};
        ioc.restart();
        ioc.poll();
    }
};

struct race_case {
    bool backing;
    bool new_table;
    bool fua;
};
std::ostream& operator<<(std::ostream& os, const race_case& c) {
    return os << (c.backing ? "raw backing, " : "no backing, ")
              << (c.new_table ? "new L2 table (L1 update held)" : "existing L2 table (L2 update held)")
              << (c.fua ? ", FUA write" : ", write + flush");
}
const race_case race_cases[] = {
    {false, false, false}, {false, true, false}, {true, false, false},
    {true, true, false},   {false, false, true}, {true, true, true},
};

BOOST_DATA_TEST_CASE(flush_covers_an_in_place_write_racing_a_metadata_update, bdata::make(race_cases), c) {
    race_fixture f(c.backing);
    constexpr std::uint64_t span = race_fixture::span;
    auto& ioc = f.ioc;
    auto& st = f.st;
    auto& fs = f.fs;
    auto& img = *f.img;
    const auto& base = f.base;
    const std::uint64_t l2 = f.l2;
    const std::uint64_t meta = c.new_table ? f.l1 : l2;  // the write to hold
    st->hold = [meta](const char* what, std::uint64_t off, std::uint64_t len) {
        return std::string_view(what) == "write" && off >= meta && off + len <= meta + cs;
    };

    const std::uint64_t x = (c.new_table ? span : 0) + 5 * cs;
    std::vector<std::uint8_t> w1(512), w2(512);
    fill_sector(w1.data(), 51, x / 512);
    fill_sector(w2.data(), 52, (x + 2048) / 512);
    bool w1_done = false, w2_done = false, flush_done = false, w1_covered = false;
    std::error_code w1_ec, w2_ec, flush_ec;
    img.img.async_write_at(x, boost::asio::buffer(w1), [&](std::error_code ec, std::size_t) {
        w1_done = true;
        w1_ec = ec;
    });
    // Until the write linking W1's cluster is in flight (held), or W1 is done
    // (a design that writes tables back later links it at the next flush).
    BOOST_REQUIRE_MESSAGE(run_until(
                              ioc, [&] { return !st->held.empty() || w1_done; }, std::chrono::seconds(5)),
                          "W1 hung");
    const bool link_in_flight = !st->held.empty();

    img.img.async_write_at(
        x + 2048, boost::asio::buffer(w2), write_options{c.fua}, [&](std::error_code ec, std::size_t) {
            w2_done = true;
            w2_ec = ec;
            if (ec || c.fua) return;
            w1_covered = w1_done && !w1_ec;  // completed before the flush was issued: durable after it
            img.img.async_flush([&](std::error_code fec) {
                flush_done = true;
                flush_ec = fec;
            });
        });
    const auto acknowledged = [&] { return w2_done && !w2_ec && (c.fua || (flush_done && !flush_ec)); };
    f.idle(acknowledged);  // everything that can run without the held write
    const bool acked_while_held = acknowledged() && !st->held.empty();
    if (!acknowledged()) {
        // W2 (or the flush) waits for the metadata write: let it go.
        st->release_held(ioc.get_executor());
        BOOST_REQUIRE_MESSAGE(run_until(ioc, acknowledged, std::chrono::seconds(5)), "W2 / flush hung");
    }
    BOOST_TEST_MESSAGE(c << ": " << (link_in_flight ? "link in flight before W1 completed" : "W1 completed first")
                         << ", W2 acknowledged " << (acked_while_held ? "while" : "after") << " the metadata write "
                         << (acked_while_held ? "was in flight" : "completed"));
    // W2 is acknowledged durable. Power fails now.
    st->cut();
    st->release_held(ioc.get_executor());
    run_until(
        ioc, [&] { return w1_done; }, std::chrono::seconds(5));
    img.img = image{};
    ioc.restart();
    ioc.poll();

    // After the crash: only what was flushed (the strictest landing).
    boost::asio::io_context ioc2;
    memory_fs fs2{ioc2.get_executor()};
    fs2.storage("top.qed") = st->image_after({});
    if (c.backing) fs2.storage("base.raw") = fs.storage("base.raw");
    open_options o2;
    o2.opener = fs2.opener();
    o2.need_check_timeout = never;
    auto [rec, re] = open(ioc2, "top.qed", o2);
    BOOST_REQUIRE_MESSAGE(!rec, "reopen: " << rec.message());
    std::vector<std::uint8_t> got(cs);
    BOOST_REQUIRE(!re.read(x, got.data(), got.size()));
    const bool w2_durable = std::memcmp(&got[2048], w2.data(), 512) == 0;
    if (!w2_durable)
        BOOST_ERROR(c << ": a write acknowledged as durable (" << (c.fua ? "FUA" : "then flushed")
                      << ") was lost in a power failure: guest offset " << x + 2048 << " reads "
                      << describe_sector_bytes(&got[2048], (x + 2048) / 512, base, c.backing)
                      << " instead of its data (it was acknowledged while the metadata write linking its cluster "
                      << (acked_while_held ? "was still in flight)" : "had completed)"));
    if (w1_covered && std::memcmp(&got[0], w1.data(), 512) != 0)
        BOOST_ERROR(c << ": W1, completed before the flush was issued, was lost: guest offset " << x << " reads "
                      << describe_sector_bytes(&got[0], x / 512, base, c.backing));
    BOOST_REQUIRE(!re.close());
}

// ---------------------------------------------------------------------------
// A table write carries only links to data flushed before it
// ---------------------------------------------------------------------------
//
// With a backing file QED's order is: a new cluster's data (with its backing
// prefill) is durable before any L2 entry pointing to it reaches the disk.
// W1 allocates a cluster; the flush meant to make its data durable is held
// in flight. Meanwhile W2 allocates a cluster whose L2 entry lies in the
// same table sector. W2's data completed after that flush started, so the
// flush does not cover it: the table write that follows must not carry
// W2's entry. Power fails once the table write is done; any subset of the
// unflushed writes may have landed -- in particular the table sector
// without W2's data. Every sector must read its backing data or a value
// written to it, and reads must not fail.

BOOST_AUTO_TEST_CASE(a_table_write_links_only_data_flushed_before_it) {
    race_fixture f(true);
    auto& ioc = f.ioc;
    auto& fs = f.fs;
    const auto& base = f.base;
    auto& st = f.st;
    auto& img = *f.img;
    const std::uint64_t l2 = f.l2;

    // W1, partial: its cluster is prefilled from the backing file.
    const std::uint64_t x1 = 5 * cs + 1024, x2 = 6 * cs + 1024;
    std::vector<std::uint8_t> w1(512), w2(512);
    fill_sector(w1.data(), 51, x1 / 512);
    fill_sector(w2.data(), 52, x2 / 512);
    bool armed = true, released = false;
    power_loss_state* raw = st.get();
    st->hold = [&armed, &released, raw, l2](const char* what, std::uint64_t off, std::uint64_t) {
        const std::string_view w(what);
        // The first table write after the held flush: the power fails at the
        // operation after it (it may land, nothing later is flushed).
        if (released && w == "write" && off >= l2 && off < l2 + cs && raw->cut_at < 0)
            raw->cut_at = static_cast<std::int64_t>(raw->submitted);
        if (!armed || w != "flush") return false;
        armed = false;  // only the first flush after W1
        return true;
    };
    bool w1_done = false, w2_done = false;
    img.img.async_write_at(x1, boost::asio::buffer(w1), [&](std::error_code, std::size_t) { w1_done = true; });
    BOOST_REQUIRE_MESSAGE(run_until(
                              ioc, [&] { return !st->held.empty(); }, std::chrono::seconds(5)),
                          "no flush after W1's allocation");
    // W2 while that flush is in flight.
    img.img.async_write_at(x2, boost::asio::buffer(w2), [&](std::error_code, std::size_t) { w2_done = true; });
    f.idle([&] { return w2_done; });
    released = true;
    st->release_held(ioc.get_executor());
    f.idle();  // background writes settle
    st->cut();
    img.img = image{};
    ioc.restart();
    ioc.poll();

    // Crash images: the standard ones, and "the table sectors landed, no data".
    auto pols = policies_for(*st);
    policy meta_only{"table sectors only", {}};
    for (std::size_t i = 0; i < st->log.size(); ++i)
        if (st->log[i].what == logged_op::write && st->log[i].offset >= l2 && st->log[i].offset < l2 + cs)
            meta_only.keep.push_back({i, {}});
    pols.push_back(meta_only);
    std::size_t failures = 0;
    for (const auto& p : pols) {
        boost::asio::io_context ioc2;
        memory_fs fs2{ioc2.get_executor()};
        fs2.storage("top.qed") = st->image_after(p.keep);
        fs2.storage("base.raw") = fs.storage("base.raw");
        open_options o2;
        o2.opener = fs2.opener();
        o2.need_check_timeout = never;
        auto [rec, re] = open(ioc2, "top.qed", o2);
        BOOST_REQUIRE_MESSAGE(!rec, "reopen: " << rec.message());
        for (const auto& [x, w] : {std::pair{x1, &w1}, std::pair{x2, &w2}}) {
            const std::uint64_t c0 = x / cs * cs;
            std::vector<std::uint8_t> got(cs);
            if (const auto ec = re.read(c0, got.data(), got.size())) {
                if (++failures <= 4)
                    BOOST_ERROR("kept " << p.name << " of " << st->log.size() << " unflushed writes: reading guest "
                                        << c0 << " fails: " << ec.message());
                continue;
            }
            for (std::uint64_t s = 0; s < cs / 512; ++s) {
                const std::uint64_t sector = c0 / 512 + s;
                const bool ok = !std::memcmp(&got[s * 512], &base[sector * 512], 512) ||
                                (sector == x / 512 && !std::memcmp(&got[s * 512], w->data(), 512));
                if (!ok && ++failures <= 4)
                    BOOST_ERROR("kept " << p.name << " of " << st->log.size() << " unflushed writes: guest offset "
                                        << sector * 512 << " reads "
                                        << describe_sector_bytes(&got[s * 512], sector, base, true)
                                        << " instead of the backing file's data");
                if (!ok) break;
            }
        }
        BOOST_REQUIRE(!re.close());
    }
    BOOST_TEST_MESSAGE(pols.size() << " post-crash images, " << failures << " failures");
    BOOST_CHECK_EQUAL(failures, 0u);
}

// ---------------------------------------------------------------------------
// Power loss during a discard
// ---------------------------------------------------------------------------
//
// Discard punches holes in data clusters that stay referenced and changes no
// metadata. Power fails at each I/O of "discard, flush" (and after both);
// whatever subset of the unflushed punches survives, the image opens
// without repair work, checks clean, the partial clusters at either end and
// everything outside the range hold their data, and each sector of the
// whole clusters holds its data or zeros (never the backing file's).

BOOST_DATA_TEST_CASE(crash_during_a_discard, bdata::make({false, true}), backing) {
    const std::uint64_t first = 2 * cs, last = 12 * cs;           // written: clusters 2..11
    const std::uint64_t from = 2 * cs + 512, to = 11 * cs + 512;  // whole: clusters 3..10
    std::size_t images_checked = 0;
    bool completed = false;
    for (std::int64_t k = 0; !completed && k < 8; ++k) {
        race_fixture f(backing);
        std::vector<std::uint8_t> data(last - first);
        for (std::uint64_t sct = 0; sct < data.size() / 512; ++sct)
            fill_sector(&data[sct * 512], 60, first / 512 + sct);
        BOOST_REQUIRE(!f.img->write(first, data.data(), data.size()));
        BOOST_REQUIRE(!f.img->flush());
        f.st->cut_at = static_cast<std::int64_t>(f.st->submitted) + k;
        const std::error_code dec = f.img->discard(from, to - from);
        const std::error_code fec = dec ? dec : f.img->flush();
        completed = !dec && !fec && !f.st->crashed;
        f.st->cut();
        f.drop();
        for (const auto& p : policies_for(*f.st)) {
            boost::asio::io_context ioc2;
            memory_fs fs2{ioc2.get_executor()};
            fs2.storage("top.qed") = f.st->image_after(p.keep);
            if (backing) fs2.storage("base.raw") = f.fs.storage("base.raw");
            open_options o2;
            o2.opener = fs2.opener();
            o2.need_check_timeout = never;
            auto [rec, re] = open(ioc2, "top.qed", o2);
            BOOST_REQUIRE_MESSAGE(!rec, "cut at " << k << ", kept " << p.name << ": reopen: " << rec.message());
            std::vector<std::uint8_t> got(data.size());
            BOOST_REQUIRE(!re.read(first, got.data(), got.size()));
            static const std::uint8_t zeros[512] = {};
            for (std::uint64_t sct = 0; sct < got.size() / 512; ++sct) {
                const std::uint64_t g = first + sct * 512;
                const bool whole = g >= 3 * cs && g < 11 * cs;
                const bool ok = !std::memcmp(&got[sct * 512], &data[sct * 512], 512) ||
                                (whole && !std::memcmp(&got[sct * 512], zeros, 512));
                BOOST_REQUIRE_MESSAGE(ok, "cut at "
                                              << k << ", kept " << p.name << ": guest offset " << g
                                              << (whole ? " (discarded cluster)" : " (outside the whole clusters)")
                                              << " holds neither its data" << (whole ? " nor zeros" : ""));
            }
            auto [cec, cr] = re.check();
            BOOST_REQUIRE(!cec);
            BOOST_CHECK_EQUAL(cr.corruptions, 0u);
            BOOST_CHECK_EQUAL(cr.leaks, 0u);
            BOOST_REQUIRE(!re.close());
            ++images_checked;
        }
    }
    BOOST_CHECK_MESSAGE(completed, "the discard and flush never ran to the end without a crash");
    BOOST_TEST_MESSAGE(images_checked << " post-crash images");
}

// ---------------------------------------------------------------------------
// Power loss while the backing file name is rewritten
// ---------------------------------------------------------------------------
//
// change_backing_file rewrites the header and the name after it. Both
// backing files hold the same bytes, so whichever name survives, the guest
// sees the same data; but the image must open after a crash at any I/O,
// whatever subset of the rewrite landed (a name longer than 448 bytes does
// not fit in the header's first sector, so the rewrite spans sectors).

struct rename_case {
    std::size_t old_pad, new_pad;  // "./" repeated before the name: same file, longer name
};
std::ostream& operator<<(std::ostream& os, const rename_case& c) {
    return os << "old name " << 2 * c.old_pad + 8 << " bytes -> new name " << 2 * c.new_pad + 9 << " bytes";
}
const rename_case rename_cases[] = {{0, 0}, {0, 300}, {300, 0}, {300, 350}};

std::string padded(std::size_t pad, const std::string& name) {
    std::string out;
    for (std::size_t i = 0; i < pad; ++i) out += "./";
    return out + name;
}

BOOST_DATA_TEST_CASE(crash_while_changing_the_backing_file, bdata::make(rename_cases), c) {
    const std::uint64_t size = 4 * 1024 * 1024;
    std::vector<std::uint8_t> base(size), guest;
    for (std::uint64_t s = 0; s < size / 512; ++s) fill_sector(&base[s * 512], backing_tag, s);
    std::vector<std::uint8_t> mine(8 * cs);
    for (std::uint64_t s = 0; s < mine.size() / 512; ++s) fill_sector(&mine[s * 512], 60, 100 * cs / 512 + s);
    guest = base;
    std::copy(mine.begin(), mine.end(), guest.begin() + 100 * cs);
    const std::string old_name = padded(c.old_pad, "base.raw"), new_name = padded(c.new_pad, "base2.raw");

    // The image before: a few clusters of its own over base.raw.
    auto base_st = std::make_shared<memory_storage>();
    base_st->write(0, {reinterpret_cast<const std::byte*>(base.data()), base.size()});
    std::shared_ptr<memory_storage> before;
    {
        boost::asio::io_context ioc;
        memory_fs fs{ioc.get_executor()};
        fs.storage("base.raw") = base_st;
        create_options co;
        co.size = size;
        co.cluster_size = cs;
        co.table_size = 1;
        co.backing_file = old_name;
        co.backing_format = image_format::raw;
        co.opener = fs.opener();
        BOOST_REQUIRE(!create(ioc, "top.qed", co));
        open_options oo;
        oo.opener = fs.opener();
        auto [ec, img] = open(ioc, "top.qed", oo);
        BOOST_REQUIRE_MESSAGE(!ec, ec.message());
        BOOST_REQUIRE(!img.write(100 * cs, mine.data(), mine.size()));
        BOOST_REQUIRE(!img.close());
        before = fs.storage("top.qed");
    }

    auto run = [&](std::int64_t cut) {
        auto st = std::make_shared<power_loss_state>();
        st->cut_at = cut;
        boost::asio::io_context ioc;
        memory_fs fs{ioc.get_executor()};
        fs.storage("top.qed") = before->clone();
        fs.storage("base.raw") = base_st;
        fs.storage("base2.raw") = base_st;
        fs.wrap = [&fs, st](std::shared_ptr<block_file> f, const std::string& path) -> std::shared_ptr<block_file> {
            if (path != "top.qed") return f;
            return std::make_shared<power_loss_file>(std::move(f), *fs.storage("top.qed"), st);
        };
        open_options oo;
        oo.opener = fs.opener();
        oo.need_check_timeout = never;
        auto [ec, img] = open(ioc, "top.qed", oo);
        if (!ec) {
            const std::error_code cec = img.change_backing_file(new_name, image_format::raw);
            if (cut < 0) BOOST_REQUIRE_MESSAGE(!cec, "change_backing_file: " << cec.message());
            (void)img.close();
        }
        img.img = image{};
        ioc.restart();
        ioc.poll();
        return st;
    };
    const std::uint64_t n = run(-1)->submitted;
    std::uint64_t images = 0, failures = 0;
    for (std::uint64_t k = 0; k < n; ++k) {
        const auto st = run(static_cast<std::int64_t>(k));
        for (const auto& p : policies_for(*st)) {
            ++images;
            boost::asio::io_context ioc;
            memory_fs fs{ioc.get_executor()};
            fs.storage("top.qed") = st->image_after(p.keep);
            fs.storage("base.raw") = base_st;
            fs.storage("base2.raw") = base_st;
            std::string log;
            open_options oo;
            oo.opener = fs.opener();
            oo.need_check_timeout = never;
            oo.log = [&log](std::string_view l) { log += std::string(" | ") + std::string(l); };
            auto [ec, img] = open(ioc, "top.qed", oo);
            if (ec) {
                if (++failures <= 3)
                    BOOST_ERROR(c << ": power lost at I/O " << k << " of " << n << ", kept " << p.name
                                  << ": the image no longer opens: " << ec.message() << log);
                continue;
            }
            const std::string name = img.img.info().backing_file;
            BOOST_CHECK_MESSAGE(name == old_name || name == new_name, "backing name after the crash: " << name);
            std::vector<std::uint8_t> got(size);
            BOOST_REQUIRE(!img.read(0, got.data(), got.size()));
            BOOST_CHECK_MESSAGE(got == guest,
                                c << ": crash at I/O " << k << ", kept " << p.name << ": guest data changed");
            BOOST_REQUIRE(!img.close());
        }
    }
    BOOST_TEST_MESSAGE(c << ": " << n << " crash points, " << images << " post-crash images, " << failures
                         << " that do not open");
    BOOST_CHECK_EQUAL(failures, 0u);
}

BOOST_AUTO_TEST_SUITE_END()
