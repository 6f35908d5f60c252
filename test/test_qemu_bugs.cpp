// SPDX-License-Identifier: BSL-1.0
// One regression test per QEMU QED bug in shared/REFERENCE.md that applies
// to a library. Each test fails under QEMU's behaviour.
#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "qed/image.hpp"
#include "support/memory_fs.hpp"
#include "support/sync.hpp"
#include "support/tmp_dir.hpp"

namespace asio = boost::asio;
namespace data = boost::unit_test::data;

BOOST_TEST_DONT_PRINT_LOG_VALUE(qed::image_format)

namespace {

constexpr std::uint64_t KiB = 1024, MiB = 1024 * 1024;

struct env {
    asio::io_context ioc;
    qed::test::memory_fs fs{ioc.get_executor()};

    qed::create_options create_opts(std::uint64_t size, std::uint32_t cs = 65536, std::uint32_t ts = 4) {
        qed::create_options o;
        o.size = size;
        o.cluster_size = cs;
        o.table_size = ts;
        o.opener = fs.opener();
        return o;
    }
    qed::open_options open_opts() {
        qed::open_options o;
        o.opener = fs.opener();
        return o;
    }
    void create(const std::string& name, const qed::create_options& o) {
        const auto ec = qed::test::create(ioc, name, o);
        BOOST_TEST_REQUIRE(!ec, "create " << name << ": " << ec.message());
    }
    qed::test::sync_image open(const std::string& name, qed::open_options o) {
        auto [ec, img] = qed::test::open(ioc, name, std::move(o));
        BOOST_TEST_REQUIRE(!ec, "open " << name << ": " << ec.message());
        return img;
    }
    qed::test::sync_image open(const std::string& name) { return open(name, open_opts()); }

    // ---- raw access to a stored file ----
    qed::header header(const std::string& name) {
        std::array<std::byte, 64> b{};
        fs.storage(name)->read(0, b);
        return qed::decode(b);
    }
    void set_header(const std::string& name, const qed::header& h) {
        const auto b = qed::encode(h);
        fs.storage(name)->write(0, b);
    }
    bool need_check_on_disk(const std::string& name) { return header(name).has(qed::feature_need_check); }
    std::uint64_t u64(const std::string& name, std::uint64_t off) {
        std::array<std::byte, 8> b{};
        fs.storage(name)->read(off, b);
        std::uint64_t v = 0;
        for (int i = 7; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint64_t>(b[static_cast<std::size_t>(i)]);
        return v;
    }
    void set_u64(const std::string& name, std::uint64_t off, std::uint64_t v) {
        std::array<std::byte, 8> b{};
        for (std::size_t i = 0; i < 8; ++i) b[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
        fs.storage(name)->write(off, b);
    }
    void fill_raw(const std::string& name, std::uint64_t off, std::uint64_t len, std::uint8_t byte) {
        std::vector<std::byte> b(len, static_cast<std::byte>(byte));
        fs.storage(name)->write(off, b);
    }
};

std::vector<std::uint8_t> bytes(std::size_t n, std::uint8_t v) {
    return std::vector<std::uint8_t>(n, v);
}

/// Index of the first byte != v, or -1.
long first_not(const std::vector<std::uint8_t>& b, std::size_t from, std::size_t to, std::uint8_t v) {
    for (std::size_t i = from; i < to; ++i)
        if (b[i] != v) return static_cast<long>(i);
    return -1;
}

std::vector<std::uint8_t> read(qed::test::sync_image& img, std::uint64_t off, std::size_t n) {
    std::vector<std::uint8_t> b(n, 0xee);
    const auto ec = img.read(off, b.data(), n);
    BOOST_TEST_REQUIRE(!ec, "read " << off << "+" << n << ": " << ec.message());
    return b;
}

void write(qed::test::sync_image& img, std::uint64_t off, const std::vector<std::uint8_t>& b) {
    const auto ec = img.write(off, b.data(), b.size());
    BOOST_TEST_REQUIRE(!ec, "write " << off << "+" << b.size() << ": " << ec.message());
}

void expect_clean(qed::test::sync_image& img) {
    auto [ec, r] = img.check();
    BOOST_TEST(!ec, ec.message());
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.leaks == 0u);
    BOOST_TEST(r.check_errors == 0u);
    for (const auto& m : r.messages) BOOST_TEST_MESSAGE("check: " << m);
}

}  // namespace

// ===========================================================================
// Bug 1: cluster counting divides by cluster_size - 1
// ===========================================================================

BOOST_AUTO_TEST_SUITE(bug1_cluster_count)

BOOST_AUTO_TEST_CASE(big_allocating_write_keeps_next_entries) {
    // QEMU: the 16M write counts 4097 clusters for 4096 and overwrites the
    // L2 entry of the cluster at 16M (same table: an L2 table spans 32M).
    env e;
    e.create("img.qed", e.create_opts(64 * MiB, 4096, 16));
    auto img = e.open("img.qed");
    write(img, 16 * MiB, bytes(4 * KiB, 0x99));
    write(img, 0, bytes(16 * MiB, 0x42));
    const auto after = read(img, 16 * MiB, 4 * KiB);
    BOOST_TEST(first_not(after, 0, after.size(), 0x99) == -1);
    const auto all = read(img, 0, 16 * MiB);
    BOOST_TEST(first_not(all, 0, all.size(), 0x42) == -1);
    const auto next = read(img, 16 * MiB + 4 * KiB, 64 * KiB);
    BOOST_TEST(first_not(next, 0, next.size(), 0) == -1);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
    auto again = e.open("img.qed");
    const auto after2 = read(again, 16 * MiB, 4 * KiB);
    BOOST_TEST(first_not(after2, 0, after2.size(), 0x99) == -1);
    expect_clean(again);
    BOOST_TEST_REQUIRE(!again.close());
}

BOOST_AUTO_TEST_CASE(big_write_zeroes_keeps_next_entries) {
    env e;
    e.create("img.qed", e.create_opts(64 * MiB, 4096, 16));
    auto img = e.open("img.qed");
    write(img, 16 * MiB, bytes(4 * KiB, 0x99));
    write(img, 8 * MiB, bytes(4 * KiB, 0x98));  // allocated inside the zeroed range
    BOOST_TEST_REQUIRE(!img.write_zeroes(0, 16 * MiB));
    const auto after = read(img, 16 * MiB, 4 * KiB);
    BOOST_TEST(first_not(after, 0, after.size(), 0x99) == -1);
    const auto zeros = read(img, 0, 16 * MiB);
    BOOST_TEST(first_not(zeros, 0, zeros.size(), 0) == -1);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(check_reports_no_false_leaks_on_large_files) {
    // QEMU's check maps cluster k to bit k * cs / (cs - 1): past cs - 1
    // clusters (16 MiB at 4K clusters) it reports false leaks.
    env e;
    e.create("img.qed", e.create_opts(64 * MiB, 4096, 4));
    auto img = e.open("img.qed");
    for (int i = 0; i < 4; ++i) write(img, static_cast<std::uint64_t>(i) * 8 * MiB, bytes(8 * MiB, 0x10 + i));
    auto [ec, r] = img.check();
    BOOST_TEST(!ec);
    BOOST_TEST(r.leaks == 0u);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.allocated_clusters == 8192u);
    BOOST_TEST(r.total_clusters == 16384u);
    BOOST_TEST(r.image_end_offset == e.fs.storage("img.qed")->size());
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// Bug 2: partial write into a zero cluster over a backing file
// ===========================================================================

BOOST_AUTO_TEST_SUITE(bug2_zero_cluster_partial_write)

BOOST_DATA_TEST_CASE(rest_of_cluster_reads_zeros, data::make({qed::image_format::raw, qed::image_format::qed}), fmt) {
    env e;
    const std::string base = fmt == qed::image_format::raw ? "base.raw" : "base.qed";
    if (fmt == qed::image_format::raw) {
        e.fill_raw(base, 0, 1 * MiB, 0xbb);
    } else {
        e.create(base, e.create_opts(1 * MiB));
        auto b = e.open(base);
        write(b, 0, bytes(1 * MiB, 0xbb));
        BOOST_TEST_REQUIRE(!b.close());
    }
    auto o = e.create_opts(2 * MiB);
    o.backing_file = base;
    o.backing_format = fmt;
    e.create("top.qed", o);
    auto img = e.open("top.qed");
    BOOST_TEST(img.img.info().chain_depth == 1u);

    BOOST_TEST_REQUIRE(!img.write_zeroes(0, 64 * KiB));  // a zero cluster: hides the backing data
    {
        auto [ec, ext] = img.block_status(0, 64 * KiB);
        BOOST_TEST_REQUIRE(!ec);
        BOOST_TEST_REQUIRE(ext.size() == 1u);
        BOOST_TEST(ext[0].depth == 0u);
        BOOST_TEST(ext[0].zero);
        BOOST_TEST(!ext[0].data);
    }
    write(img, 4096, bytes(512, 0x55));  // partial write into the zero cluster
    auto check_contents = [&](qed::test::sync_image& i) {
        const auto c = read(i, 0, 128 * KiB);
        BOOST_TEST(first_not(c, 0, 4096, 0) == -1);
        BOOST_TEST(first_not(c, 4096, 4608, 0x55) == -1);
        BOOST_TEST(first_not(c, 4608, 64 * KiB, 0) == -1, "rest of the zero cluster came from the backing file");
        BOOST_TEST(first_not(c, 64 * KiB, 128 * KiB, 0xbb) == -1);  // next cluster: backing data
    };
    check_contents(img);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
    auto again = e.open("top.qed");
    check_contents(again);
    BOOST_TEST_REQUIRE(!again.close());
}

BOOST_AUTO_TEST_CASE(partial_write_into_zero_cluster_of_many) {
    // Several zero clusters, a write that covers the end of one and the start
    // of the next, with concurrent partial writes into others.
    env e;
    e.fill_raw("base.raw", 0, 1 * MiB, 0xbb);
    auto o = e.create_opts(1 * MiB, 4096, 4);
    o.backing_file = "base.raw";
    o.backing_format = qed::image_format::raw;
    e.create("top.qed", o);
    auto img = e.open("top.qed");
    BOOST_TEST_REQUIRE(!img.write_zeroes(0, 256 * KiB));
    std::vector<std::vector<std::uint8_t>> bufs;
    std::size_t done = 0, errors = 0;
    bufs.reserve(32);
    for (int i = 0; i < 32; ++i) {
        bufs.push_back(bytes(1024, static_cast<std::uint8_t>(0x20 + i)));
        // Across the boundary between clusters 2i and 2i+1 (4K clusters).
        const std::uint64_t off = (2 * static_cast<std::uint64_t>(i) + 1) * 4096 - 512;
        img.img.async_write_at(off, asio::buffer(bufs.back()), [&](std::error_code ec, std::size_t) {
            ++done;
            errors += ec ? 1 : 0;
        });
    }
    e.ioc.restart();
    while (done < 32 && e.ioc.run_one()) {
    }
    BOOST_TEST_REQUIRE(done == 32u);
    BOOST_TEST_REQUIRE(errors == 0u);
    const auto c = read(img, 0, 256 * KiB);
    for (int i = 0; i < 32; ++i) {
        const std::size_t off = (2 * static_cast<std::size_t>(i) + 1) * 4096 - 512;
        BOOST_TEST(first_not(c, off, off + 1024, static_cast<std::uint8_t>(0x20 + i)) == -1);
        const std::size_t lo = 2 * static_cast<std::size_t>(i) * 4096;
        BOOST_TEST(first_not(c, lo, off, 0) == -1);
        BOOST_TEST(first_not(c, off + 1024, lo + 8192, 0) == -1);
    }
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// Bug 3: backing file names longer than 4095 bytes
// ===========================================================================

BOOST_AUTO_TEST_SUITE(bug3_long_backing_name)

BOOST_AUTO_TEST_CASE(rebase_to_long_name_and_reopen) {
    qed::test::tmp_dir dir("bug3");
    asio::io_context ioc;
    const auto base = bytes(1 * MiB, 0xcd);
    qed::test::pwrite_file(dir / "base.raw", 0, base.data(), base.size());
    qed::create_options co;
    co.size = 2 * MiB;
    co.cluster_size = 65536;
    co.backing_file = "base.raw";
    co.backing_format = qed::image_format::raw;
    BOOST_TEST_REQUIRE(!qed::test::create(ioc, dir / "top.qed", co));

    std::string long_name;
    while (long_name.size() < 4200) long_name += "./";
    long_name += "base.raw";  // 4208 bytes, still names base.raw
    BOOST_TEST_REQUIRE(long_name.size() > 4095u);
    {
        auto [ec, img] = qed::test::open(ioc, dir / "top.qed");
        BOOST_TEST_REQUIRE(!ec, ec.message());
        const auto cec = img.change_backing_file(long_name, qed::image_format::raw);
        BOOST_TEST_REQUIRE(!cec, cec.message());
        BOOST_TEST(img.img.info().backing_file == long_name);
        const auto d = read(img, 0, 64 * KiB);
        BOOST_TEST(first_not(d, 0, d.size(), 0xcd) == -1);
        BOOST_TEST_REQUIRE(!img.close());
    }
    // On disk: the name as given, inside the header cluster, where the
    // header says (a name this long is placed past the first block, so the
    // switch to it is a single atomic block write).
    const auto raw_header = qed::test::pread_file(dir / "top.qed", 0, 64);
    std::array<std::byte, 64> hb{};
    std::memcpy(hb.data(), raw_header.data(), 64);
    const auto h = qed::decode(hb);
    BOOST_TEST(h.backing_filename_size == long_name.size());
    BOOST_TEST(h.has(qed::feature_backing_file));
    BOOST_TEST(h.has(qed::feature_backing_format_no_probe));
    BOOST_TEST(std::uint64_t{h.backing_filename_offset} + h.backing_filename_size <=
               std::uint64_t{h.cluster_size} * h.header_size);
    const auto raw = qed::test::pread_file(dir / "top.qed", h.backing_filename_offset, h.backing_filename_size);
    BOOST_TEST(std::string(raw.begin(), raw.end()) == long_name);

    for (bool ro : {true, false}) {  // read-only first: the read-write pass writes
        qed::open_options o;
        o.read_only = ro;
        auto [ec, img] = qed::test::open(ioc, dir / "top.qed", o);
        BOOST_TEST_REQUIRE(!ec, "reopen (read_only=" << ro << "): " << ec.message());
        BOOST_TEST(img.img.info().backing_file == long_name);
        BOOST_TEST(img.img.info().chain_depth == 1u);
        const auto d = read(img, 0, 64 * KiB);
        BOOST_TEST(first_not(d, 0, d.size(), 0xcd) == -1);
        if (!ro) {
            write(img, 4096, bytes(512, 0x01));  // allocating: prefill from the backing file
            const auto d2 = read(img, 0, 64 * KiB);
            BOOST_TEST(first_not(d2, 0, 4096, 0xcd) == -1);
            BOOST_TEST(first_not(d2, 4096, 4608, 0x01) == -1);
            BOOST_TEST(first_not(d2, 4608, 64 * KiB, 0xcd) == -1);
        }
        BOOST_TEST_REQUIRE(!img.close());
    }
}

BOOST_AUTO_TEST_CASE(create_with_long_name_and_too_long_name) {
    qed::test::tmp_dir dir("bug3c");
    asio::io_context ioc;
    const auto base = bytes(256 * KiB, 0xce);
    qed::test::pwrite_file(dir / "base.raw", 0, base.data(), base.size());
    std::string long_name;
    while (long_name.size() < 6000) long_name += "./";
    long_name += "base.raw";
    // 4K clusters: the name needs a second header cluster.
    qed::create_options co;
    co.size = 1 * MiB;
    co.cluster_size = 4096;
    co.backing_file = long_name;
    co.backing_format = qed::image_format::raw;
    BOOST_TEST_REQUIRE(!qed::test::create(ioc, dir / "top.qed", co));
    {
        auto [ec, img] = qed::test::open(ioc, dir / "top.qed");
        BOOST_TEST_REQUIRE(!ec, ec.message());
        BOOST_TEST(img.img.info().header_size == 2u);
        BOOST_TEST(img.img.info().backing_file == long_name);
        const auto d = read(img, 0, 8 * KiB);
        BOOST_TEST(first_not(d, 0, d.size(), 0xce) == -1);
        // A name that can't fit in the header clusters is refused; nothing changes.
        std::string too_long;
        while (too_long.size() < 9000) too_long += "./";
        too_long += "base.raw";
        const auto cec = img.change_backing_file(too_long, qed::image_format::raw);
        BOOST_TEST((cec == qed::errc::backing_name_too_long), cec.message());
        BOOST_TEST(img.img.info().backing_file == long_name);
        BOOST_TEST_REQUIRE(!img.close());
    }
    auto [ec, img] = qed::test::open(ioc, dir / "top.qed");
    BOOST_TEST_REQUIRE(!ec, ec.message());
    BOOST_TEST(img.img.info().backing_file == long_name);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// Bug 4: maximum image size overflow for large clusters
// ===========================================================================

BOOST_AUTO_TEST_SUITE(bug4_max_size)

BOOST_DATA_TEST_CASE(large_clusters_table_size_4, data::make({4u << 20, 8u << 20, 64u << 20}), cs) {
    env e;
    const std::uint64_t max = qed::max_image_size(cs, 4);
    BOOST_TEST(max == qed::max_addressable_size);  // QEMU computes 0 (2^64 wraps) for 4M
    for (std::uint64_t size : {max, max - 1 * MiB, std::uint64_t{1} << 62}) {
        BOOST_TEST_CONTEXT("size " << size) {
            e.create("img.qed", e.create_opts(size, cs, 4));
            auto img = e.open("img.qed");
            BOOST_TEST(img.img.size() == size);
            BOOST_TEST(img.img.info().cluster_size == cs);
            const auto tail = read(img, size - 4096, 4096);
            BOOST_TEST(first_not(tail, 0, tail.size(), 0) == -1);
            if (cs == (4u << 20)) {
                // Allocate at both ends of the address space.
                write(img, size - 512, bytes(512, 0x44));
                write(img, 0, bytes(4096, 0x45));
                const auto t2 = read(img, size - 4096, 4096);
                BOOST_TEST(first_not(t2, 0, 4096 - 512, 0) == -1);
                BOOST_TEST(first_not(t2, 4096 - 512, 4096, 0x44) == -1);
                expect_clean(img);
            }
            BOOST_TEST_REQUIRE(!img.close());
            auto again = e.open("img.qed");
            BOOST_TEST(again.img.size() == size);
            if (cs == (4u << 20)) {
                const auto t3 = read(again, size - 512, 512);
                BOOST_TEST(first_not(t3, 0, 512, 0x44) == -1);
            }
            BOOST_TEST_REQUIRE(!again.close());
        }
    }
    // One sector more than the maximum is refused.
    const auto ec = qed::test::create(e.ioc, "big.qed", e.create_opts(max + 512, cs, 4));
    BOOST_TEST((ec == qed::errc::image_too_large), ec.message());
}

BOOST_AUTO_TEST_CASE(grow_to_the_maximum) {
    env e;
    e.create("img.qed", e.create_opts(1 * MiB, 4u << 20, 4));
    auto img = e.open("img.qed");
    BOOST_TEST(!img.grow(qed::max_addressable_size));
    BOOST_TEST(img.img.size() == qed::max_addressable_size);
    const auto ec = img.grow(qed::max_addressable_size + 512);
    BOOST_TEST((ec == qed::errc::image_too_large), ec.message());
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(e.header("img.qed").image_size == qed::max_addressable_size);
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// Bug 5: close clears NEED_CHECK although check found unrepairable corruption
// ===========================================================================

BOOST_AUTO_TEST_SUITE(bug5_need_check_survives_corruption)

namespace {

/// An image whose L2 entries 0 and 1 point at the same data cluster (a
/// corruption repair can't fix), with NEED_CHECK set.
void make_double_reference(env& e, const std::string& name, bool dirty) {
    e.create(name, e.create_opts(1 * MiB));
    {
        auto img = e.open(name);
        write(img, 0, bytes(64 * KiB, 0x11));
        write(img, 64 * KiB, bytes(64 * KiB, 0x22));
        BOOST_TEST_REQUIRE(!img.close());
    }
    const auto h = e.header(name);
    const std::uint64_t l2 = e.u64(name, h.l1_table_offset);
    BOOST_TEST_REQUIRE(l2 != 0u);
    const std::uint64_t c0 = e.u64(name, l2);
    const std::uint64_t c1 = e.u64(name, l2 + 8);
    BOOST_TEST_REQUIRE(c0 > 1u);
    BOOST_TEST_REQUIRE(c1 > 1u);
    BOOST_TEST_REQUIRE(c0 != c1);
    e.set_u64(name, l2 + 8, c0);  // cluster c0 referenced twice (c1 now leaked)
    if (dirty) {
        auto hd = h;
        hd.features |= qed::feature_need_check;
        e.set_header(name, hd);
    }
}

}  // namespace

BOOST_AUTO_TEST_CASE(check_finds_corruption_and_close_keeps_bit) {
    env e;
    make_double_reference(e, "img.qed", true);
    auto o = e.open_opts();
    o.repair_on_open = false;
    auto img = e.open("img.qed", o);
    BOOST_TEST(img.img.info().need_check);
    auto [ec, r] = img.check();
    BOOST_TEST(!ec);
    BOOST_TEST(r.corruptions >= 1u);
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(e.need_check_on_disk("img.qed"), "close cleared NEED_CHECK on a corrupt image");
}

BOOST_AUTO_TEST_CASE(repair_cannot_fix_and_close_keeps_bit) {
    env e;
    make_double_reference(e, "img.qed", true);
    auto o = e.open_opts();
    o.repair_on_open = false;
    auto img = e.open("img.qed", o);
    auto [ec, r] = img.check(qed::check_options::repair::all);
    BOOST_TEST(!ec);
    BOOST_TEST(r.corruptions >= 1u);
    BOOST_TEST(!r.need_check_cleared);
    BOOST_TEST(img.img.info().need_check);
    BOOST_TEST(e.need_check_on_disk("img.qed"));
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(e.need_check_on_disk("img.qed"), "close cleared NEED_CHECK on a corrupt image");
}

BOOST_AUTO_TEST_CASE(need_check_timer_does_not_clear_bit_after_corruption_found) {
    env e;
    make_double_reference(e, "img.qed", true);
    auto o = e.open_opts();
    o.repair_on_open = false;
    o.need_check_timeout = std::chrono::milliseconds(20);
    auto img = e.open("img.qed", o);
    auto [ec, r] = img.check();
    BOOST_TEST(r.corruptions >= 1u);
    write(img, 512 * KiB, bytes(64 * KiB, 0x33));  // an allocating write, then quiet time
    e.ioc.restart();
    e.ioc.run_for(std::chrono::milliseconds(150));
    BOOST_TEST(e.need_check_on_disk("img.qed"));
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(e.need_check_on_disk("img.qed"));
}

BOOST_AUTO_TEST_CASE(dirty_corrupt_image_refuses_read_write_open) {
    env e;
    make_double_reference(e, "img.qed", true);
    std::vector<std::string> log;
    auto o = e.open_opts();
    o.log = [&log](std::string_view l) { log.emplace_back(l); };
    auto [ec, img] = qed::test::open(e.ioc, "img.qed", o);
    BOOST_TEST((ec == qed::errc::corrupt_image), ec.message());
    BOOST_TEST(!img.img.is_open());
    BOOST_TEST(!log.empty());
    BOOST_TEST(e.need_check_on_disk("img.qed"));

    // Read-only open still works, so the data can be recovered.
    auto ro = e.open_opts();
    ro.read_only = true;
    auto rimg = e.open("img.qed", ro);
    BOOST_TEST(rimg.img.info().need_check);
    const auto d = read(rimg, 0, 128 * KiB);
    BOOST_TEST(first_not(d, 0, 64 * KiB, 0x11) == -1);
    BOOST_TEST(first_not(d, 64 * KiB, 128 * KiB, 0x11) == -1);  // entry 1 points at cluster 0's data now
    BOOST_TEST_REQUIRE(!rimg.close());
    BOOST_TEST(e.need_check_on_disk("img.qed"));
}

BOOST_AUTO_TEST_CASE(unchecked_dirty_image_keeps_bit_on_close) {
    // Opened read-write without the repair-on-open check and never checked:
    // nothing has established consistency, so close must not declare the
    // image clean (the next read-write open must still check it).
    env e;
    make_double_reference(e, "img.qed", true);
    auto o = e.open_opts();
    o.repair_on_open = false;
    auto img = e.open("img.qed", o);
    const auto d = read(img, 0, 4096);
    BOOST_TEST(first_not(d, 0, d.size(), 0x11) == -1);
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(e.need_check_on_disk("img.qed"), "close cleared NEED_CHECK of an image that was never checked");
    auto [ec, again] = qed::test::open(e.ioc, "img.qed", e.open_opts());
    BOOST_TEST((ec == qed::errc::corrupt_image), ec.message());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// Bug 6: info() reports the NEED_CHECK bit as it is on disk
// ===========================================================================

BOOST_AUTO_TEST_SUITE(bug6_dirty_flag_reported)

BOOST_AUTO_TEST_CASE(need_check_reflects_disk_while_dirty) {
    env e;
    e.create("img.qed", e.create_opts(4 * MiB));
    auto o = e.open_opts();
    o.need_check_timeout = std::chrono::seconds(30);
    auto img = e.open("img.qed", o);
    BOOST_TEST(!img.img.info().need_check);
    BOOST_TEST(!e.need_check_on_disk("img.qed"));
    write(img, 0, bytes(4096, 0x12));  // first allocating write sets the bit
    BOOST_TEST(e.need_check_on_disk("img.qed"));
    BOOST_TEST(img.img.info().need_check);
    BOOST_TEST((img.img.info().features & qed::feature_need_check) != 0u);
    write(img, 0, bytes(4096, 0x13));  // in place: still dirty
    BOOST_TEST(img.img.info().need_check == e.need_check_on_disk("img.qed"));
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(!e.need_check_on_disk("img.qed"));

    // A dirty image opened read-only says so.
    auto h = e.header("img.qed");
    h.features |= qed::feature_need_check;
    e.set_header("img.qed", h);
    auto ro = e.open_opts();
    ro.read_only = true;
    auto rimg = e.open("img.qed", ro);
    BOOST_TEST(rimg.img.info().need_check);
    BOOST_TEST_REQUIRE(!rimg.close());
    BOOST_TEST(e.need_check_on_disk("img.qed"));  // read-only: untouched

    // A read-write open repairs it and clears the bit (nothing to fix here).
    auto rw = e.open("img.qed");
    BOOST_TEST(!rw.img.info().need_check);
    BOOST_TEST(!e.need_check_on_disk("img.qed"));
    BOOST_TEST_REQUIRE(!rw.close());
}

BOOST_AUTO_TEST_CASE(with_backing_file_no_need_check) {
    // With a backing file QEMU flushes before each L2 update instead of
    // setting NEED_CHECK; info() and the disk agree on that too.
    env e;
    e.fill_raw("base.raw", 0, 1 * MiB, 0x77);
    auto co = e.create_opts(2 * MiB);
    co.backing_file = "base.raw";
    co.backing_format = qed::image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    write(img, 4096, bytes(512, 0x01));
    BOOST_TEST(img.img.info().need_check == e.need_check_on_disk("top.qed"));
    BOOST_TEST(!e.need_check_on_disk("top.qed"));
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// Bug 7: table_size 1
// ===========================================================================

BOOST_AUTO_TEST_SUITE(bug7_table_size_1)

BOOST_DATA_TEST_CASE(table_size_1_image_opens_and_works, data::make({4096u, 65536u}), cs) {
    env e;
    const std::uint64_t span = std::uint64_t{cs} / 8 * cs;  // one L2 table's reach
    const std::uint64_t size = 4 * span;
    e.create("img.qed", e.create_opts(size, cs, 1));
    // The L1 table (one cluster) ends exactly at the end of the file: the
    // case QEMU's `end <= offset` check rejects.
    BOOST_TEST(e.fs.storage("img.qed")->size() == 2ull * cs);
    {
        auto img = e.open("img.qed");
        BOOST_TEST(img.img.info().table_size == 1u);
        const auto z = read(img, 0, 8192);
        BOOST_TEST(first_not(z, 0, z.size(), 0) == -1);
        write(img, span - 4096, bytes(8192, 0x71));  // across the first table boundary
        write(img, 3 * span, bytes(4096, 0x72));     // last table
        write(img, size - 512, bytes(512, 0x73));    // last sector
        BOOST_TEST_REQUIRE(!img.write_zeroes(2 * span, std::uint64_t{cs}));
        expect_clean(img);
        BOOST_TEST_REQUIRE(!img.close());
    }
    auto img = e.open("img.qed");
    const auto a = read(img, span - 4096, 8192);
    BOOST_TEST(first_not(a, 0, a.size(), 0x71) == -1);
    const auto b = read(img, 3 * span, 4096);
    BOOST_TEST(first_not(b, 0, b.size(), 0x72) == -1);
    const auto c = read(img, size - 512, 512);
    BOOST_TEST(first_not(c, 0, c.size(), 0x73) == -1);
    auto [ec, ext] = img.block_status(2 * span, cs);
    BOOST_TEST_REQUIRE(!ec);
    BOOST_TEST_REQUIRE(ext.size() == 1u);
    BOOST_TEST(ext[0].zero);
    BOOST_TEST(ext[0].present);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// Bug 8: the need-check timer fires
// ===========================================================================

BOOST_AUTO_TEST_SUITE(bug8_need_check_timer)

BOOST_AUTO_TEST_CASE(timer_clears_need_check) {
    env e;
    e.create("img.qed", e.create_opts(4 * MiB));
    auto o = e.open_opts();
    o.need_check_timeout = std::chrono::milliseconds(50);
    auto img = e.open("img.qed", o);
    write(img, 0, bytes(64 * KiB, 0x21));  // allocating
    BOOST_TEST(e.need_check_on_disk("img.qed"));
    BOOST_TEST(img.img.info().need_check);
    // Deterministic except for the clock: wait for the timer, however
    // slowly this machine runs, up to a generous limit.
    qed::test::run_until(
        e.ioc, [&] { return !img.img.info().need_check; }, std::chrono::seconds(10));
    BOOST_TEST(!img.img.info().need_check);
    BOOST_TEST(!e.need_check_on_disk("img.qed"), "the need-check timer never cleared the bit");

    // It sets and clears again on the next allocation.
    write(img, 1 * MiB, bytes(4096, 0x22));
    BOOST_TEST(e.need_check_on_disk("img.qed"));
    qed::test::run_until(
        e.ioc, [&] { return !img.img.info().need_check; }, std::chrono::seconds(10));
    BOOST_TEST(!e.need_check_on_disk("img.qed"));
    // The data is intact and the image consistent.
    const auto d = read(img, 0, 64 * KiB);
    BOOST_TEST(first_not(d, 0, d.size(), 0x21) == -1);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(timer_on_real_file) {
    qed::test::tmp_dir dir("bug8");
    asio::io_context ioc;
    qed::create_options co;
    co.size = 4 * MiB;
    BOOST_TEST_REQUIRE(!qed::test::create(ioc, dir / "img.qed", co));
    qed::open_options o;
    o.need_check_timeout = std::chrono::milliseconds(50);
    auto [ec, img] = qed::test::open(ioc, dir / "img.qed", o);
    BOOST_TEST_REQUIRE(!ec, ec.message());
    write(img, 0, bytes(4096, 0x31));
    auto on_disk = [&] {
        const auto raw = qed::test::pread_file(dir / "img.qed", 0, 64);
        std::array<std::byte, 64> hb{};
        std::memcpy(hb.data(), raw.data(), 64);
        return qed::decode(hb).has(qed::feature_need_check);
    };
    BOOST_TEST(on_disk());
    ioc.restart();
    ioc.run_for(std::chrono::milliseconds(200));
    // Real fdatasyncs: give a slow machine up to two more seconds.
    for (int i = 0; i < 20 && img.img.info().need_check; ++i) {
        ioc.restart();
        ioc.run_for(std::chrono::milliseconds(100));
    }
    BOOST_TEST(!img.img.info().need_check);
    BOOST_TEST(!on_disk());
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// Bug 9 (historical): reads across the end of a shorter backing file, and
// header_size overflow. (L2 cache eviction and concurrent misses are in
// test_l2_cache.)
// ===========================================================================

BOOST_AUTO_TEST_SUITE(bug9_historical)

namespace {
std::uint8_t base_byte(std::uint64_t pos) {
    return static_cast<std::uint8_t>(0x40 + (pos % 191));
}
}  // namespace

BOOST_DATA_TEST_CASE(read_across_end_of_shorter_backing_file,
                     data::make({std::uint64_t{102912}, std::uint64_t{100001}, std::uint64_t{65536 + 512},
                                 std::uint64_t{1}, std::uint64_t{196608}}),
                     base_size) {
    env e;
    std::vector<std::byte> base(base_size);
    for (std::uint64_t i = 0; i < base_size; ++i) base[i] = static_cast<std::byte>(base_byte(i));
    e.fs.storage("base.raw")->write(0, base);
    auto co = e.create_opts(1 * MiB);
    co.backing_file = "base.raw";
    co.backing_format = qed::image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");

    auto expect = [&](const std::vector<std::uint8_t>& got, std::uint64_t at) {
        long bad = -1;
        for (std::size_t i = 0; i < got.size() && bad < 0; ++i) {
            const std::uint64_t p = at + i;
            const std::uint8_t want = p < base_size ? base_byte(p) : 0;
            if (got[i] != want) bad = static_cast<long>(i);
        }
        BOOST_TEST(bad == -1, "first wrong byte at guest " << (at + static_cast<std::uint64_t>(bad)));
    };
    // Exact-size heap buffers: an overrun past the backing data would write
    // beyond them (ASan reports it; the contents check catches the rest).
    expect(read(img, 0, 256 * KiB), 0);
    const std::uint64_t near = base_size / 512 * 512;
    const std::uint64_t from = near >= 4096 ? near - 4096 : 0;
    expect(read(img, from, 8192), from);
    expect(read(img, 512 * KiB, 4096), 512 * KiB);

    // Scatter-gather buffers straddling the backing end.
    std::vector<std::vector<std::uint8_t>> parts{std::vector<std::uint8_t>(1536, 0xee),
                                                 std::vector<std::uint8_t>(512, 0xee),
                                                 std::vector<std::uint8_t>(6144, 0xee)};
    std::vector<asio::mutable_buffer> bufs;
    for (auto& p : parts) bufs.emplace_back(p.data(), p.size());
    auto [ec, n] = qed::test::await<std::error_code, std::size_t>(
        e.ioc, [&](auto h) { img.img.async_read_at(from, bufs, std::move(h)); });
    BOOST_TEST_REQUIRE(!ec, ec.message());
    BOOST_TEST(n == 8192u);
    std::vector<std::uint8_t> joined;
    for (auto& p : parts) joined.insert(joined.end(), p.begin(), p.end());
    expect(joined, from);

    // An allocating write in the cluster holding the backing end: the
    // prefill copies what the backing file has and zeros past it.
    const std::uint64_t wpos = (base_size / 65536) * 65536 + 512;
    write(img, wpos, bytes(512, 0xab));
    auto after = read(img, wpos - 512, 65536);
    BOOST_TEST(first_not(after, 512, 1024, 0xab) == -1);
    std::fill(after.begin() + 512, after.begin() + 1024, std::uint8_t{0});  // compare the rest below
    std::vector<std::uint8_t> expected(65536);
    for (std::size_t i = 0; i < expected.size(); ++i) {
        const std::uint64_t p = wpos - 512 + i;
        expected[i] = (i >= 512 && i < 1024) ? 0 : (p < base_size ? base_byte(p) : 0);
    }
    BOOST_TEST((after == expected));
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(read_across_end_of_shorter_qed_backing_file) {
    env e;
    e.create("base.qed", e.create_opts(128 * KiB + 512, 4096, 4));
    {
        auto b = e.open("base.qed");
        write(b, 0, bytes(128 * KiB + 512, 0x5c));
        BOOST_TEST_REQUIRE(!b.close());
    }
    auto co = e.create_opts(1 * MiB);
    co.backing_file = "base.qed";
    co.backing_format = qed::image_format::qed;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    const auto d = read(img, 64 * KiB, 128 * KiB);
    BOOST_TEST(first_not(d, 0, 64 * KiB + 512, 0x5c) == -1);
    BOOST_TEST(first_not(d, 64 * KiB + 512, d.size(), 0) == -1);
    write(img, 128 * KiB + 1024, bytes(512, 0x01));  // cluster 128K..192K straddles the base end
    const auto d2 = read(img, 128 * KiB, 64 * KiB);
    BOOST_TEST(first_not(d2, 0, 512, 0x5c) == -1);
    BOOST_TEST(first_not(d2, 512, 1024, 0) == -1);
    BOOST_TEST(first_not(d2, 1024, 1536, 0x01) == -1);
    BOOST_TEST(first_not(d2, 1536, d2.size(), 0) == -1);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(header_size_overflow_is_refused) {
    env e;
    e.create("img.qed", e.create_opts(1 * MiB));
    for (std::uint32_t hs : {0xffffffffu, 0x80000000u, 0x10000u}) {
        auto h = e.header("img.qed");
        h.header_size = hs;
        e.set_header("img.qed", h);
        auto [ec, img] = qed::test::open(e.ioc, "img.qed", e.open_opts());
        BOOST_TEST((ec == qed::errc::invalid_header_size), "header_size " << hs << ": " << ec.message());
    }
}

BOOST_AUTO_TEST_SUITE_END()
