// SPDX-License-Identifier: BSL-1.0
// The image API, operation by operation: create options, opening (read-only,
// read-write, the backing chain), read / write / write-zeroes / flush /
// close semantics, block status, info(), change backing file, grow,
// make_empty, request validation, and where new clusters land in the file.
// Data-driven across cluster sizes 4K/64K and table sizes 1/4/16 where the
// geometry matters.
#include <algorithm>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <limits>
#include <sstream>

#include "qed/image.hpp"
#include "qed/node_options.hpp"
#include "support/image_fixture.hpp"
#include "support/recording_file.hpp"

namespace data = boost::unit_test::data;
using namespace qed;
using namespace qed::test;

template <>
struct boost::test_tools::tt_detail::print_log_value<qed::image_format> {
    void operator()(std::ostream& os, qed::image_format f) { os << qed::to_string(f); }
};

namespace {

std::string describe(const extent& e) {
    std::ostringstream os;
    os << "{" << e.offset << "+" << e.length << " depth " << e.depth << (e.present ? " present" : "")
       << (e.zero ? " zero" : "") << (e.data ? " data" : "");
    if (e.host_offset) os << " @" << *e.host_offset;
    os << "}";
    return os.str();
}
std::string describe(const std::vector<extent>& v) {
    std::string s;
    for (const auto& e : v) s += describe(e) + " ";
    return s;
}
extent data_ext(std::uint64_t off, std::uint64_t len, unsigned depth, std::uint64_t host) {
    return {off, len, depth, true, false, true, host};
}
extent zero_ext(std::uint64_t off, std::uint64_t len, unsigned depth) {
    return {off, len, depth, true, true, false, std::nullopt};
}
extent hole_ext(std::uint64_t off, std::uint64_t len, unsigned depth) {
    return {off, len, depth, false, true, false, std::nullopt};
}

std::vector<extent> status(sync_image& img, std::uint64_t off, std::uint64_t len) {
    auto [ec, v] = img.block_status(off, len);
    BOOST_TEST_REQUIRE(!ec, "block status " << off << "+" << len << ": " << ec.message());
    return v;
}
void expect_extents(sync_image& img, std::uint64_t off, std::uint64_t len, const std::vector<extent>& want) {
    const auto got = status(img, off, len);
    BOOST_TEST((got == want),
               "block status " << off << "+" << len << "\n  got:  " << describe(got) << "\n  want: " << describe(want));
}

std::error_code grow(sync_image& img, std::uint64_t n) {
    return img.grow(n);
}

/// Table updates may reach the disk in the background: a flush puts every
/// completed change on disk before the test looks at the file's bytes.
void settle(sync_image& img) {
    const auto ec = img.flush();
    BOOST_TEST_REQUIRE(!ec, "flush: " << ec.message());
}

}  // namespace

// ===========================================================================
// create
// ===========================================================================

BOOST_AUTO_TEST_SUITE(creating)

BOOST_DATA_TEST_CASE(fresh_image_layout, data::make(all_layouts), l) {
    mem_env e;
    e.create("img.qed", e.create_opts(3 * l.cs + 1, l));
    const header h = e.hdr("img.qed");
    BOOST_TEST(h.magic == qed::magic);
    BOOST_TEST(h.cluster_size == l.cs);
    BOOST_TEST(h.table_size == l.ts);
    BOOST_TEST(h.header_size == 1u);
    BOOST_TEST(h.features == 0u);
    BOOST_TEST(h.compat_features == 0u);
    BOOST_TEST(h.autoclear_features == 0u);
    BOOST_TEST(h.l1_table_offset == l.cs);
    BOOST_TEST(h.image_size == 3ull * l.cs + 512);
    BOOST_TEST(h.backing_filename_offset == 0u);
    BOOST_TEST(h.backing_filename_size == 0u);
    BOOST_TEST(e.file_size("img.qed") == l.fresh_file_size());
    const auto rest = e.bytes("img.qed", 64, static_cast<std::size_t>(l.fresh_file_size() - 64));
    BOOST_TEST(first_mismatch(rest, 0, rest.size(), 0, 0) == -1, "header padding and L1 table must be zeros");

    auto img = e.open("img.qed");
    BOOST_TEST(img.img.size() == 3ull * l.cs + 512);
    BOOST_TEST(img.img.info().virtual_size == 3ull * l.cs + 512);
    expect_pattern(img, 0, 3 * l.cs + 512, 0, "fresh image");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_DATA_TEST_CASE(size_rounded_up_to_512,
                     data::make({std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{511}, std::uint64_t{512},
                                 std::uint64_t{513}, GiB + 1, GiB - 1}),
                     size) {
    mem_env e;
    e.create("img.qed", e.create_opts(size));
    const std::uint64_t want = (size + 511) / 512 * 512;
    BOOST_TEST(e.hdr("img.qed").image_size == want);
    auto img = e.open("img.qed");
    BOOST_TEST(img.img.size() == want);
    BOOST_TEST_REQUIRE(!img.close());

    // Raw images round the same way.
    auto ro = e.create_opts(size);
    ro.format = image_format::raw;
    e.create("img.raw", ro);
    BOOST_TEST(e.file_size("img.raw") == want);
}

struct bad_create {
    const char* what;
    std::uint64_t size;
    std::uint32_t cs;
    std::uint32_t ts;
    errc expected;
};
std::ostream& operator<<(std::ostream& os, const bad_create& b) {
    return os << b.what;
}

const bad_create bad_creates[] = {
    {"cluster size 0", MiB, 0, 4, errc::invalid_cluster_size},
    {"cluster size 512", MiB, 512, 4, errc::invalid_cluster_size},
    {"cluster size 2K", MiB, 2048, 4, errc::invalid_cluster_size},
    {"cluster size 4K+1", MiB, 4097, 4, errc::invalid_cluster_size},
    {"cluster size 12K", MiB, 12288, 4, errc::invalid_cluster_size},
    {"cluster size 128M", MiB, 128u << 20, 4, errc::invalid_cluster_size},
    {"cluster size 2^31", MiB, 0x80000000u, 4, errc::invalid_cluster_size},
    {"table size 0", MiB, 65536, 0, errc::invalid_table_size},
    {"table size 3", MiB, 65536, 3, errc::invalid_table_size},
    {"table size 17", MiB, 65536, 17, errc::invalid_table_size},
    {"table size 32", MiB, 65536, 32, errc::invalid_table_size},
    {"size beyond L1 reach (4K, table 1: 1 GiB)", GiB + 512, 4096, 1, errc::image_too_large},
    {"size beyond L1 reach (64K, table 4: 64 TiB)", (64ull << 40) + 512, 65536, 4, errc::image_too_large},
    {"size 2^64-1", std::numeric_limits<std::uint64_t>::max(), 65536, 4, errc::image_too_large},
};

BOOST_DATA_TEST_CASE(invalid_options_are_refused, data::make(bad_creates), b) {
    mem_env e;
    const auto ec = qed::test::create(e.ioc, "img.qed", e.create_opts(b.size, {b.cs, b.ts}));
    BOOST_TEST((ec == b.expected), b.what << ": got " << ec.message());
}

BOOST_DATA_TEST_CASE(refused_create_leaves_existing_file_alone, data::make(bad_creates), b) {
    // Validation comes before the file is created (or truncated): a refused
    // create must not destroy what the path held.
    mem_env e;
    e.make_raw("img.qed", 3 * 65536, 17);
    const auto before = e.all_bytes("img.qed");
    const auto ec = qed::test::create(e.ioc, "img.qed", e.create_opts(b.size, {b.cs, b.ts}));
    BOOST_TEST(static_cast<bool>(ec));
    BOOST_TEST((e.all_bytes("img.qed") == before), b.what << ": the refused create changed the existing file");
}

BOOST_AUTO_TEST_CASE(maximum_size_for_the_geometry_is_accepted) {
    mem_env e;
    e.create("img.qed", e.create_opts(GiB, {4096, 1}));  // exactly the L1 reach
    auto img = e.open("img.qed");
    BOOST_TEST(img.img.size() == GiB);
    write_pattern(img, GiB - 4096, 4096, 3);
    expect_pattern(img, GiB - 4096, 4096, 3, "last cluster");
    BOOST_TEST_REQUIRE(!img.close());
}

struct backing_case {
    const char* name;
    std::optional<image_format> fmt;
    bool base_is_qed;
};
std::ostream& operator<<(std::ostream& os, const backing_case& c) {
    return os << c.name;
}
const backing_case backing_cases[] = {{"raw", image_format::raw, false},
                                      {"qed", image_format::qed, true},
                                      {"probe qed", std::nullopt, true},
                                      {"probe raw", std::nullopt, false}};

BOOST_DATA_TEST_CASE(backing_file_and_format_in_the_header, data::make(backing_cases), c) {
    mem_env e;
    const std::string base = c.base_is_qed ? "base.qed" : "base.raw";
    if (c.base_is_qed) {
        e.create(base, e.create_opts(MiB, {4096, 1}));
        auto b = e.open(base);
        write_pattern(b, 0, 64 * KiB, 5);
        BOOST_TEST_REQUIRE(!b.close());
    } else {
        e.make_raw(base, MiB, 5);
    }
    auto co = e.create_opts(MiB);
    co.backing_file = base;
    co.backing_format = c.fmt;
    e.create("top.qed", co);

    const header h = e.hdr("top.qed");
    const std::uint64_t want_features =
        feature_backing_file | (c.fmt == image_format::raw ? std::uint64_t{feature_backing_format_no_probe} : 0);
    BOOST_TEST(h.features == want_features);
    BOOST_TEST(h.backing_filename_offset == 64u);
    BOOST_TEST(h.backing_filename_size == base.size());
    const auto name = e.bytes("top.qed", 64, base.size());
    BOOST_TEST(std::string(name.begin(), name.end()) == base);
    BOOST_TEST(e.bytes("top.qed", 64 + base.size(), 1)[0] == 0u);  // the rest of the header cluster is zeros
    BOOST_TEST(h.header_size == 1u);

    auto img = e.open("top.qed");
    BOOST_TEST_REQUIRE(img.img.backing().is_open());
    BOOST_TEST((img.img.backing().info().format == (c.base_is_qed ? image_format::qed : image_format::raw)));
    BOOST_TEST(img.img.info().chain_depth == 1u);
    expect_pattern(img, 0, 64 * KiB, 5, "through the backing file");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(size_left_out_takes_the_backing_size) {
    mem_env e;
    e.make_raw("base.raw", 3 * MiB + 100, 1);  // raw images round up to 512
    auto co = e.create_opts(0);
    co.size.reset();  // left out: the backing file's size
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    BOOST_TEST(e.hdr("top.qed").image_size == 3 * MiB + 512);

    e.create("base.qed", e.create_opts(5 * MiB + 512, {4096, 4}));
    auto cq = e.create_opts(0);
    cq.size.reset();
    cq.backing_file = "base.qed";
    e.create("top2.qed", cq);
    BOOST_TEST(e.hdr("top2.qed").image_size == 5 * MiB + 512);

    // Relative to the new image's directory, as when it is opened.
    e.make_raw("dir/b.raw", 2 * MiB, 2);
    auto cd = e.create_opts(0);
    cd.size.reset();
    cd.backing_file = "b.raw";
    cd.backing_format = image_format::raw;
    e.create("dir/c.qed", cd);
    BOOST_TEST(e.hdr("dir/c.qed").image_size == 2 * MiB);

    // No size and no readable backing file: nothing to go by.
    auto cm = e.create_opts(0);
    cm.size.reset();
    cm.backing_file = "missing.raw";
    cm.backing_format = image_format::raw;
    const auto ec = qed::test::create(e.ioc, "top3.qed", cm);
    BOOST_TEST((ec == std::errc::no_such_file_or_directory), ec.message());

    // An explicit 0 is a 0-byte image, backing file or not (as qemu-img).
    auto cz = e.create_opts(0);
    cz.backing_file = "base.raw";
    cz.backing_format = image_format::raw;
    e.create("zero.qed", cz);
    BOOST_TEST(e.hdr("zero.qed").image_size == 0u);
    // No size and no backing file: nothing to take a size from.
    auto cn = e.create_opts(0);
    cn.size.reset();
    BOOST_TEST((qed::test::create(e.ioc, "none.qed", cn) == errc::invalid_argument));
}

BOOST_AUTO_TEST_CASE(raw_image_with_backing_file_is_refused) {
    mem_env e;
    auto co = e.create_opts(MiB);
    co.format = image_format::raw;
    co.backing_file = "base.raw";
    const auto ec = qed::test::create(e.ioc, "img.raw", co);
    BOOST_TEST((ec == errc::not_supported), ec.message());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// open
// ===========================================================================

BOOST_AUTO_TEST_SUITE(opening)

BOOST_AUTO_TEST_CASE(read_only_open_reads_and_refuses_every_change) {
    mem_env e;
    e.make_raw("base.raw", 2 * MiB, 4);
    auto co = e.create_opts(2 * MiB);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("img.qed", co);
    e.make_raw("other.raw", MiB, 6);
    {
        auto img = e.open("img.qed");
        write_pattern(img, 64 * KiB, 64 * KiB, 9);
        BOOST_TEST_REQUIRE(!img.close());
    }
    const auto before = e.all_bytes("img.qed");

    auto o = e.open_opts();
    o.read_only = true;
    auto img = e.open("img.qed", o);
    BOOST_TEST(img.img.info().read_only);
    expect_pattern(img, 0, 64 * KiB, 4, "backing through a read-only image");
    expect_pattern(img, 64 * KiB, 64 * KiB, 9, "own data");
    auto buf = pattern(0, 4096, 1);
    BOOST_TEST((img.write(0, buf.data(), buf.size()) == errc::read_only));
    BOOST_TEST((img.write(64 * KiB, buf.data(), buf.size()) == errc::read_only));  // in place, too
    BOOST_TEST((img.write_zeroes(0, 64 * KiB) == errc::read_only));
    BOOST_TEST((img.grow(4 * MiB) == errc::read_only));
    BOOST_TEST((img.change_backing_file("other.raw", image_format::raw) == errc::read_only));
    BOOST_TEST((img.change_backing_file("", std::nullopt) == errc::read_only));
    BOOST_TEST((make_empty(img) == errc::read_only));
    BOOST_TEST((img.check(check_options::repair::leaks).first == errc::read_only));
    BOOST_TEST((img.check(check_options::repair::all).first == errc::read_only));
    const auto r = check_image(img);  // a plain check is fine
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.allocated_clusters == 1u);
    BOOST_TEST(!img.flush());
    BOOST_TEST(img.img.size() == 2 * MiB);
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST((e.all_bytes("img.qed") == before), "a read-only open changed the file");
}

BOOST_AUTO_TEST_CASE(read_write_open_keeps_data_across_reopen) {
    mem_env e;
    e.create("img.qed", e.create_opts(4 * MiB, {4096, 4}));
    {
        auto img = e.open("img.qed");
        BOOST_TEST(!img.img.info().read_only);
        write_pattern(img, 4096 * 3 + 512, 3 * 4096, 12);
        BOOST_TEST_REQUIRE(!img.close());
    }
    auto img = e.open("img.qed");
    expect_pattern(img, 0, 4096 * 3 + 512, 0, "before");
    expect_pattern(img, 4096 * 3 + 512, 3 * 4096, 12, "written");
    expect_pattern(img, 4096 * 6 + 512, 4096, 0, "after");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(raw_backing_is_never_probed_with_no_probe) {
    // A raw backing file whose bytes happen to be a QED image: with
    // BACKING_FORMAT_NO_PROBE it is read as raw bytes; without, probing
    // opens it as QED. (Probing a raw file that says "QED" would expose
    // another file's contents through the guest: the reason for the bit.)
    mem_env e;
    e.create("inner.qed", e.create_opts(MiB, {4096, 1}));
    {
        auto in = e.open("inner.qed");
        write_pattern(in, 0, 4096, 8);
        BOOST_TEST_REQUIRE(!in.close());
    }
    const auto inner = e.all_bytes("inner.qed");
    e.put("disk.raw", 0, inner);

    auto co = e.create_opts(MiB);
    co.backing_file = "disk.raw";
    co.backing_format = image_format::raw;
    e.create("raw_top.qed", co);
    auto img = e.open("raw_top.qed");
    BOOST_TEST((img.img.backing().info().format == image_format::raw));
    BOOST_TEST((img.img.info().backing_format == image_format::raw));
    const auto got = read_bytes(img, 0, inner.size());
    BOOST_TEST((got == inner), "the raw backing file must be read byte for byte");
    BOOST_TEST_REQUIRE(!img.close());

    co.backing_format = std::nullopt;
    e.create("probe_top.qed", co);
    auto pimg = e.open("probe_top.qed");
    BOOST_TEST((pimg.img.backing().info().format == image_format::qed));
    expect_pattern(pimg, 0, 4096, 8, "probed as QED: its guest data");
    expect_pattern(pimg, 4096, 4096, 0, "probed as QED: unallocated");
    BOOST_TEST_REQUIRE(!pimg.close());
}

BOOST_AUTO_TEST_CASE(relative_backing_name_is_relative_to_the_image_directory) {
    mem_env e;
    e.make_raw("b.qed", MiB, 1);  // a decoy where a cwd-relative lookup would go
    e.create("dir/b.qed", e.create_opts(MiB, {4096, 1}));
    {
        auto b = e.open("dir/b.qed");
        write_pattern(b, 0, MiB, 2);
        BOOST_TEST_REQUIRE(!b.close());
    }
    auto co = e.create_opts(MiB);
    co.backing_file = "b.qed";
    co.backing_format = image_format::qed;
    e.create("dir/a.qed", co);
    auto img = e.open("dir/a.qed");
    const auto i = img.img.info();
    BOOST_TEST(i.backing_file == "b.qed");
    BOOST_TEST(i.backing_file_full == "dir/b.qed");
    BOOST_TEST(img.img.backing().info().filename == "dir/b.qed");
    expect_pattern(img, 0, MiB, 2, "dir/b.qed's data");
    BOOST_TEST_REQUIRE(!img.close());

    // Opened on an already open block file: `name` places it.
    auto [fec, fimg] = await<std::error_code, image>(e.ioc, [&](auto h) {
        image::async_open(make_memory_file(e.ioc.get_executor(), e.fs.storage("dir/a.qed")), "dir/a.qed", e.open_opts(),
                          std::move(h));
    });
    BOOST_TEST_REQUIRE(!fec, fec.message());
    sync_image fs_img{e.ioc, fimg};
    expect_pattern(fs_img, 0, 64 * KiB, 2, "opened on a block file");
    BOOST_TEST_REQUIRE(!fs_img.close());

    // "./" in a relative name.
    auto cdot = e.create_opts(MiB);
    cdot.backing_file = "./b.qed";
    cdot.backing_format = image_format::qed;
    e.create("dir/dot.qed", cdot);
    auto dimg = e.open("dir/dot.qed");
    expect_pattern(dimg, 0, 64 * KiB, 2, "./b.qed");
    BOOST_TEST_REQUIRE(!dimg.close());

    // Absolute names are used as they are.
    e.make_raw("/abs/base.raw", MiB, 3);
    auto ca = e.create_opts(MiB);
    ca.backing_file = "/abs/base.raw";
    ca.backing_format = image_format::raw;
    e.create("dir/abs.qed", ca);
    auto aimg = e.open("dir/abs.qed");
    BOOST_TEST(aimg.img.info().backing_file_full == "/abs/base.raw");
    expect_pattern(aimg, 0, MiB, 3, "absolute backing");
    BOOST_TEST_REQUIRE(!aimg.close());
}

BOOST_DATA_TEST_CASE(chain_of_depth_three_reads_each_level, data::make(all_layouts), l) {
    // vm/top.qed -> vm/mid2.qed (probed) -> vm/mid1.qed (qed) -> vm/base.raw (raw),
    // all named relative to their own directory.
    mem_env e;
    const std::uint64_t c = l.cs;
    e.make_raw("vm/base.raw", 7 * c, 3);  // shorter than the images: cluster 7 is past its end
    auto c1 = e.create_opts(8 * c, l);
    c1.backing_file = "base.raw";
    c1.backing_format = image_format::raw;
    e.create("vm/mid1.qed", c1);
    {
        auto m = e.open("vm/mid1.qed");
        write_pattern(m, 1 * c, c, 21);
        write_pattern(m, 5 * c, c, 25);
        BOOST_TEST_REQUIRE(!m.close());
    }
    auto c2 = e.create_opts(8 * c, l);
    c2.backing_file = "mid1.qed";
    c2.backing_format = image_format::qed;
    e.create("vm/mid2.qed", c2);
    {
        auto m = e.open("vm/mid2.qed");
        write_pattern(m, 2 * c, c, 32);
        write_pattern(m, 5 * c, c, 35);
        BOOST_TEST_REQUIRE(!m.close());
    }
    auto ct = e.create_opts(8 * c, l);
    ct.backing_file = "mid2.qed";
    e.create("vm/top.qed", ct);
    {
        auto t = e.open("vm/top.qed");
        write_pattern(t, 3 * c, c, 43);
        BOOST_TEST_REQUIRE(!t.write_zeroes(4 * c, c));
        BOOST_TEST_REQUIRE(!t.close());
    }

    auto img = e.open("vm/top.qed");
    BOOST_TEST(img.img.info().chain_depth == 3u);
    const auto b1 = img.img.backing();
    BOOST_TEST_REQUIRE(b1.is_open());
    BOOST_TEST(b1.info().filename == "vm/mid2.qed");
    BOOST_TEST(b1.info().chain_depth == 2u);
    const auto b2 = b1.backing();
    BOOST_TEST_REQUIRE(b2.is_open());
    BOOST_TEST(b2.info().filename == "vm/mid1.qed");
    const auto b3 = b2.backing();
    BOOST_TEST_REQUIRE(b3.is_open());
    BOOST_TEST(b3.info().filename == "vm/base.raw");
    BOOST_TEST((b3.info().format == image_format::raw));
    BOOST_TEST(!b3.backing().is_open());
    {
        // The backing handles are read-only views of the chain.
        sync_image back{e.ioc, b2};
        BOOST_TEST(b2.info().read_only);
        auto one = pattern(0, 512, 1);
        BOOST_TEST((back.write(0, one.data(), one.size()) == errc::read_only));
        expect_pattern(back, c, c, 21, "mid1 through its own handle");
    }

    // One read over every level, then cluster by cluster.
    const unsigned want[8] = {3, 21, 32, 43, 0, 35, 3, 0};
    const auto all = read_bytes(img, 0, 8 * c);
    for (unsigned k = 0; k < 8; ++k) {
        const long bad = first_mismatch(all, k * c, (k + 1) * c, 0, want[k]);
        BOOST_TEST(bad == -1, "cluster " << k << " should come from seed " << want[k] << "; wrong at " << bad);
    }
    {
        // Across the boundary of base data (depth 3) and mid1 data (depth 2).
        const auto got = read_bytes(img, c / 2, c);
        BOOST_TEST(first_mismatch(got, 0, c / 2, c / 2, 3) == -1);
        BOOST_TEST(first_mismatch(got, c / 2, c, c / 2, 21) == -1);
    }

    expect_extents(
        img, 0, 8 * c,
        {data_ext(0, c, 3, 0), data_ext(c, c, 2, e.l2_entry("vm/mid1.qed", c)),
         data_ext(2 * c, c, 1, e.l2_entry("vm/mid2.qed", 2 * c)),
         data_ext(3 * c, c, 0, e.l2_entry("vm/top.qed", 3 * c)), zero_ext(4 * c, c, 0),
         data_ext(5 * c, c, 1, e.l2_entry("vm/mid2.qed", 5 * c)), data_ext(6 * c, c, 3, 6 * c), hole_ext(7 * c, c, 2)});

    // An allocating write in the top image prefills from three levels down.
    write_pattern(img, 6 * c + 1024, 512, 60);
    const auto got = read_bytes(img, 6 * c, c);
    BOOST_TEST(first_mismatch(got, 0, 1024, 6 * c, 3) == -1);
    BOOST_TEST(first_mismatch(got, 1024, 1536, 6 * c, 60) == -1);
    BOOST_TEST(first_mismatch(got, 1536, c, 6 * c, 3) == -1);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(json_names_open_by_their_options) {
    mem_env e;
    e.create("dir/b.qed", e.create_opts(MiB, {4096, 1}));
    {
        auto b = e.open("dir/b.qed");
        write_pattern(b, 0, 64 * KiB, 3);
        BOOST_TEST_REQUIRE(!b.close());
    }
    // A tree that names one file: opened as that file, and called by its name.
    for (const std::string name : {R"(json:{"driver": "qed", "file": {"driver": "file", "filename": "dir/b.qed"}})",
                                   "json:{'driver':'qed','file':{'filename':'dir/b.qed'}}",
                                   R"(json:{"file.driver": "file", "file.filename": "dir/b.qed"})"}) {
        auto img = e.open(name);
        BOOST_TEST(img.img.info().filename == "dir/b.qed");
        BOOST_TEST(img.img.info().format == image_format::qed);
        expect_pattern(img, 0, 64 * KiB, 3, name.c_str());
        BOOST_TEST_REQUIRE(!img.close());
    }
    // A json: backing name is stored and opened as it is (not relative to the image).
    auto co = e.create_opts(MiB);
    co.backing_file = R"(json:{"driver": "qed", "file": {"driver": "file", "filename": "dir/b.qed"}})";
    co.backing_format = image_format::qed;
    e.create("dir/top.qed", co);
    {
        auto top = e.open("dir/top.qed");
        BOOST_TEST(top.img.info().backing_file_full == co.backing_file);
        BOOST_TEST(top.img.backing().info().filename == "dir/b.qed");
        expect_pattern(top, 0, 64 * KiB, 3, "through the json: backing name");
        BOOST_TEST_REQUIRE(!top.close());
    }
    // raw over qed: the qed image's guest bytes are the raw image's file.
    const std::string nested =
        R"(json:{"driver": "raw", "file": {"driver": "qed", "file": {"filename": "dir/b.qed"}}})";
    {
        auto raw = e.open(nested);
        BOOST_TEST(raw.img.info().format == image_format::raw);
        BOOST_TEST(raw.img.info().filename == nested);
        BOOST_TEST(raw.img.size() == MiB);
        expect_pattern(raw, 0, 64 * KiB, 3, "raw over qed");
        write_pattern(raw, 512 * KiB, 8 * KiB, 4);
        BOOST_TEST_REQUIRE(!raw.close());
    }
    // blkdebug and null-co nodes: rules as inject-error lists over an image
    // node (here one that fails nothing but flushes), and a sized null device.
    {
        auto d = e.open(
            R"(json:{"driver": "qed", "file": {"driver": "blkdebug", "align": "4k", "inject-error": [{"event": "flush_to_disk", "errno": 28, "once": "on"}], "image": {"driver": "file", "filename": "dir/b.qed"}}})");
        BOOST_TEST(d.img.size() == MiB);
        expect_pattern(d, 0, 64 * KiB, 3, "through blkdebug");
        BOOST_TEST_REQUIRE(!d.close());
        auto n = e.open(R"(json:{"driver": "null-co", "size": "4M"})");
        BOOST_TEST(n.img.info().format == image_format::raw);
        BOOST_TEST(n.img.size() == 4 * MiB);
        BOOST_TEST_REQUIRE(!n.close());
    }
    {
        auto b = e.open("dir/b.qed");
        expect_pattern(b, 512 * KiB, 8 * KiB, 4, "written through the raw node");
        BOOST_TEST(!b.img.info().need_check);  // the nested image was closed cleanly
        BOOST_TEST_REQUIRE(!b.close());
    }
    // Refused, each with one line naming the problem.
    const std::pair<std::string, std::string> bad[] = {
        {R"(json:{"driver": "qed", "file": {"driver": "blkdebug"}})", "blkdebug: Parameter 'image' is missing"},
        {R"(json:{"driver": "qed", "file": {"driver": "blkdebug", "inject-error": [{"errno": 5}], "image": {"filename": "dir/b.qed"}}})",
         "inject-error.0: Missing event name for rule"},
        {R"(json:{"driver": "qed", "file": {"driver": "blkdebug", "inject-error": [{"event": "read_aio", "rate": 5}], "image": {"filename": "dir/b.qed"}}})",
         "Invalid parameter 'rate' in [inject-error]"},
        {R"(json:{"driver": "null-co", "size": "lots"})", "null-co: Parameter 'size' expects a size"},
        {R"(json:{"driver": "quorum", "children": []})", "Number of provided children must be 1 or more"},
        {R"(json:{"driver": "vvfat", "dir": "/x"})", "Unknown driver 'vvfat'"},
        {R"(json:{"driver": "ssh", "path": "/x"})", "Parameter 'server' is missing"},
        {R"(json:{"driver": "ssh", "host": "localhost", "port": 0.42, "path": "/x"})",
         "Parameter 'port' expects a number"},
        {R"(json:{"driver": "nbd", "path": "s", "host": "h"})", "path and host may not be used at the same time"},
        {R"(json:{"driver": "qed", "file": {"filename": "dir/b.qed"}, "bogus": 1})",
         "does not support the option 'bogus'"},
        {R"(json:{"driver": "qed", "file": "dir/b.qed", "file.driver": "file"})", "node references"},
        {R"(json:{"driver": "qed")", "Could not parse"},
        {R"(json:["driver"])", "Invalid JSON object"},
    };
    for (const auto& [name, why] : bad) {
        std::vector<std::string> lines;
        auto o = e.open_opts();
        o.log = [&lines](std::string_view l) { lines.emplace_back(l); };
        auto [ec, img] = e.try_open(name, o);
        BOOST_TEST(ec, name);
        BOOST_TEST_REQUIRE(!lines.empty(), name);
        BOOST_TEST(lines.back().find(why) != std::string::npos, lines.back());
    }
}

BOOST_AUTO_TEST_CASE(options_flatten_to_dotted_keys_as_qemu_flattens_them) {
    std::string why;
    const auto a =
        parse_json_options(R"(json:{"driver":"qed","file":{"driver":"file","filename":"x"},"n":[1,true,null]})", why);
    BOOST_TEST_REQUIRE(a.has_value(), why);
    const node_options want{{"driver", "qed"}, {"file.driver", "file"}, {"file.filename", "x"},
                            {"n.0", "1"},      {"n.1", "on"},           {"n.2", ""}};
    BOOST_TEST((*a == want));
    const auto b = parse_dotted_options("driver=qed,file.driver=file,file.filename=a,,b", why);
    BOOST_TEST_REQUIRE(b.has_value(), why);
    BOOST_TEST(b->at("file.filename") == "a,b");
    BOOST_TEST(json_name(*b) == R"(json:{"driver": "qed", "file": {"driver": "file", "filename": "a,b"}})");
    BOOST_TEST((sub_options(*b, "file") == node_options{{"driver", "file"}, {"filename", "a,b"}}));
    // Lists flatten to indexed keys and come back as lists, in index order
    // (QEMU writes a quorum's children so); other objects stay objects.
    const auto q = parse_dotted_options(
        "driver=quorum,children.0.filename=a,children.1.filename=b,children.2.filename=c,children.3.filename=d,"
        "children.4.filename=e,children.5.filename=f,children.6.filename=g,children.7.filename=h,"
        "children.8.filename=i,children.9.filename=j,children.10.filename=k,x.1=y,x.2=z",
        why);
    BOOST_TEST_REQUIRE(q.has_value(), why);
    const std::string qn = json_name(*q);
    BOOST_TEST(qn.find(R"("children": [{"filename": "a"}, {"filename": "b"}, )") != std::string::npos, qn);
    BOOST_TEST(qn.find(R"({"filename": "j"}, {"filename": "k"}])") != std::string::npos, qn);
    BOOST_TEST(qn.find(R"("x": {"1": "y", "2": "z"})") != std::string::npos, qn);  // not 0..n-1
    const auto back = parse_json_options(qn, why);
    BOOST_TEST_REQUIRE(back.has_value(), why);
    BOOST_TEST((*back == *q));
    BOOST_TEST(json_name(node_options{{"0", "a"}}) == R"(json:{"0": "a"})");  // the top is always an object
    // A dotted key meeting the same key flattened from an object.
    BOOST_TEST(!parse_json_options(R"({"file": {"driver": "file"}, "file.driver": "raw"})", why).has_value());
    BOOST_TEST(!parse_dotted_options("driver", why).has_value());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// zero clusters and write-zeroes
// ===========================================================================

BOOST_AUTO_TEST_SUITE(write_zeroes)

BOOST_DATA_TEST_CASE(zero_clusters_read_as_zeros_and_hide_the_backing_file, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    e.make_raw("base.raw", 4 * c, 9);
    auto co = e.create_opts(4 * c, l);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    {
        auto img = e.open("top.qed");
        BOOST_TEST_REQUIRE(!img.write_zeroes(c, 2 * c));
        settle(img);
        // Aligned: zero clusters, no data; only the new L2 table is written.
        BOOST_TEST(e.l2_entry("top.qed", 0) == 0u);
        BOOST_TEST(e.l2_entry("top.qed", c) == zero_cluster_entry);
        BOOST_TEST(e.l2_entry("top.qed", 2 * c) == zero_cluster_entry);
        BOOST_TEST(e.l2_entry("top.qed", 3 * c) == 0u);
        BOOST_TEST(e.file_size("top.qed") == l.fresh_file_size() + l.table_bytes());
        BOOST_TEST_REQUIRE(!img.close());
    }
    auto img = e.open("top.qed");
    expect_pattern(img, 0, c, 9, "cluster 0 from the backing file");
    expect_pattern(img, c, 2 * c, 0, "zero clusters");
    expect_pattern(img, 3 * c, c, 9, "cluster 3 from the backing file");
    expect_extents(img, 0, 4 * c, {data_ext(0, c, 1, 0), zero_ext(c, 2 * c, 0), data_ext(3 * c, c, 1, 3 * c)});
    BOOST_TEST_REQUIRE(!img.close());

    // An L2 entry of 1 written by someone else reads the same way.
    e.set_u64("top.qed", e.l2_entry_pos("top.qed", 3 * c), zero_cluster_entry);
    auto again = e.open("top.qed");
    expect_pattern(again, 3 * c, c, 0, "crafted zero cluster");
    expect_extents(again, 3 * c, c, {zero_ext(3 * c, c, 0)});
    expect_clean(again);
    BOOST_TEST_REQUIRE(!again.close());
}

BOOST_DATA_TEST_CASE(aligned_write_zeroes_writes_no_data, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    const std::uint64_t span = l.span();
    e.create("img.qed", e.create_opts(2 * span, l));
    auto img = e.open("img.qed");
    const std::uint64_t fresh = l.fresh_file_size();

    BOOST_TEST_REQUIRE(!img.write_zeroes(0, 4 * c));
    settle(img);
    BOOST_TEST(e.file_size("img.qed") == fresh + l.table_bytes(), "only an L2 table may be added");
    BOOST_TEST(e.l1_entry("img.qed", 0) == fresh);
    for (unsigned k = 0; k < 4; ++k) BOOST_TEST(e.l2_entry("img.qed", k * c) == zero_cluster_entry);
    BOOST_TEST(e.l2_entry("img.qed", 4 * c) == 0u);
    expect_extents(img, 0, 4 * c, {zero_ext(0, 4 * c, 0)});

    // Across an L2 boundary: a second table, still no data.
    BOOST_TEST_REQUIRE(!img.write_zeroes(span - 2 * c, 4 * c));
    settle(img);
    BOOST_TEST(e.file_size("img.qed") == fresh + 2 * l.table_bytes());
    BOOST_TEST(e.l2_entry("img.qed", span - c) == zero_cluster_entry);
    BOOST_TEST(e.l2_entry("img.qed", span + c) == zero_cluster_entry);
    expect_extents(img, span - 2 * c, 4 * c, {zero_ext(span - 2 * c, 4 * c, 0)});

    // Over zero clusters again: nothing at all changes.
    const auto before = e.all_bytes("img.qed");
    BOOST_TEST_REQUIRE(!img.write_zeroes(0, 4 * c));
    BOOST_TEST_REQUIRE(!img.write_zeroes(c + 512, 1024));  // partial, inside a zero cluster
    BOOST_TEST((e.all_bytes("img.qed") == before), "write-zeroes over zero clusters changed the file");
    expect_pattern(img, 0, 4 * c, 0, "zeros");
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_DATA_TEST_CASE(unaligned_parts_are_written_as_zeros, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    e.make_raw("base.raw", 6 * c, 7);
    auto co = e.create_opts(6 * c, l);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    const std::uint64_t fresh = l.fresh_file_size();

    // Half a cluster, one whole cluster, half a cluster.
    BOOST_TEST_REQUIRE(!img.write_zeroes(c / 2, 2 * c));
    expect_pattern(img, 0, c / 2, 7, "before the range: backing data (prefill)");
    expect_pattern(img, c / 2, 2 * c, 0, "the zeroed range");
    expect_pattern(img, 2 * c + c / 2, c / 2, 7, "after the range: backing data (postfill)");
    expect_pattern(img, 3 * c, 3 * c, 7, "untouched clusters");
    settle(img);
    // The partial clusters got data clusters (appended in order: cluster 0,
    // its new L2 table, then cluster 2); the whole one is a zero cluster.
    const std::uint64_t host0 = fresh, host2 = fresh + c + l.table_bytes();
    BOOST_TEST(e.l1_entry("top.qed", 0) == fresh + c);
    BOOST_TEST(e.l2_entry("top.qed", 0) == host0);
    BOOST_TEST(e.l2_entry("top.qed", c) == zero_cluster_entry);
    BOOST_TEST(e.l2_entry("top.qed", 2 * c) == host2);
    BOOST_TEST(e.file_size("top.qed") == host2 + c);
    expect_extents(
        img, 0, 4 * c,
        {data_ext(0, c, 0, host0), zero_ext(c, c, 0), data_ext(2 * c, c, 0, host2), data_ext(3 * c, c, 1, 3 * c)});

    // A partial write into the zero cluster: the rest of it stays zeros,
    // never the backing file's bytes; the new cluster goes at the end.
    write_pattern(img, c + 1024, 512, 50);
    settle(img);
    const auto got = read_bytes(img, c, c);
    BOOST_TEST(first_mismatch(got, 0, 1024, c, 0) == -1, "zero cluster's head");
    BOOST_TEST(first_mismatch(got, 1024, 1536, c, 50) == -1, "the write");
    BOOST_TEST(first_mismatch(got, 1536, c, c, 0) == -1, "zero cluster's tail");
    BOOST_TEST(e.l2_entry("top.qed", c) == host2 + c);
    BOOST_TEST(e.file_size("top.qed") == host2 + 2 * c);

    // Unaligned write-zeroes inside a zero-free unallocated cluster, both ends in it.
    BOOST_TEST_REQUIRE(!img.write_zeroes(4 * c + 512, 1024));
    const auto z = read_bytes(img, 4 * c, c);
    BOOST_TEST(first_mismatch(z, 0, 512, 4 * c, 7) == -1);
    BOOST_TEST(first_mismatch(z, 512, 1536, 4 * c, 0) == -1);
    BOOST_TEST(first_mismatch(z, 1536, c, 4 * c, 7) == -1);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_DATA_TEST_CASE(write_zeroes_over_data_writes_in_place, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    e.create("img.qed", e.create_opts(4 * c, l));
    auto img = e.open("img.qed");
    write_pattern(img, 0, 3 * c, 2);
    settle(img);
    const std::uint64_t h0 = e.l2_entry("img.qed", 0), h1 = e.l2_entry("img.qed", c), h2 = e.l2_entry("img.qed", 2 * c);
    const std::uint64_t size = e.file_size("img.qed");

    BOOST_TEST_REQUIRE(!img.write_zeroes(0, c));               // aligned, over data
    BOOST_TEST_REQUIRE(!img.write_zeroes(c + 512, c - 1024));  // unaligned, over data
    settle(img);
    BOOST_TEST(e.l2_entry("img.qed", 0) == h0);
    BOOST_TEST(e.l2_entry("img.qed", c) == h1);
    BOOST_TEST(e.l2_entry("img.qed", 2 * c) == h2);
    BOOST_TEST(e.file_size("img.qed") == size);
    const auto on_disk = e.bytes("img.qed", h0, c);
    BOOST_TEST(first_mismatch(on_disk, 0, c, 0, 0) == -1, "zeros must be in the data cluster itself");
    const auto got = read_bytes(img, 0, 3 * c);
    BOOST_TEST(first_mismatch(got, 0, c, 0, 0) == -1);
    BOOST_TEST(first_mismatch(got, c, c + 512, 0, 2) == -1);
    BOOST_TEST(first_mismatch(got, c + 512, 2 * c - 512, 0, 0) == -1);
    BOOST_TEST(first_mismatch(got, 2 * c - 512, 3 * c, 0, 2) == -1);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_DATA_TEST_CASE(no_unmap_allocates_real_zeros, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    e.make_raw("base.raw", 4 * c, 11);
    auto co = e.create_opts(4 * c, l);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    const std::uint64_t fresh = l.fresh_file_size();

    zero_options zo;
    zo.may_unmap = false;
    BOOST_TEST_REQUIRE(!img.write_zeroes(c, 2 * c, zo));
    settle(img);
    // Data clusters (never zero clusters), appended: two data clusters, then the table.
    BOOST_TEST(e.l2_entry("top.qed", c) == fresh);
    BOOST_TEST(e.l2_entry("top.qed", 2 * c) == fresh + c);
    BOOST_TEST(e.l1_entry("top.qed", 0) == fresh + 2 * c);
    BOOST_TEST(e.file_size("top.qed") == fresh + 2 * c + l.table_bytes());
    expect_pattern(img, c, 2 * c, 0, "zeros hide the backing file");
    expect_pattern(img, 0, c, 11, "backing before");
    expect_pattern(img, 3 * c, c, 11, "backing after");
    // The clusters are allocated here (depth 0, at `fresh`); whether block
    // status calls them data or zero depends on whether the file holds their
    // zeros as bytes or as a hole (it asks the file; the memory file keeps
    // 64 KiB pages, so 64 KiB clusters of zeros may be holes).
    const auto got = status(img, 0, 4 * c);
    const std::vector<extent> as_data{data_ext(0, c, 1, 0), data_ext(c, 2 * c, 0, fresh), data_ext(3 * c, c, 1, 3 * c)};
    const std::vector<extent> as_hole{
        data_ext(0, c, 1, 0), {c, 2 * c, 0, true, true, false, fresh}, data_ext(3 * c, c, 1, 3 * c)};
    BOOST_TEST((got == as_data || got == as_hole), "block status: " << describe(got));
    const auto on_disk = e.bytes("top.qed", fresh, 2 * c);
    BOOST_TEST(first_mismatch(on_disk, 0, on_disk.size(), 0, 0) == -1);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// block status
// ===========================================================================

BOOST_AUTO_TEST_SUITE(block_status)

BOOST_DATA_TEST_CASE(data_zero_and_unallocated_extents, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    const std::uint64_t span = l.span();
    e.create("img.qed", e.create_opts(span + 8 * c, l));
    auto img = e.open("img.qed");
    const std::uint64_t fresh = l.fresh_file_size(), tb = l.table_bytes();

    expect_extents(img, 0, span + 8 * c, {hole_ext(0, span + 8 * c, 0)});

    write_pattern(img, c, c, 1);      // data at fresh, table after it
    write_pattern(img, 2 * c, c, 2);  // data at fresh + c + tb: not contiguous with cluster 1
    BOOST_TEST_REQUIRE(!img.write_zeroes(4 * c, 2 * c));
    write_pattern(img, 6 * c, 2 * c, 3);  // two contiguous clusters: one extent
    const std::uint64_t h1 = fresh, h2 = fresh + c + tb, h6 = h2 + c;
    expect_extents(img, 0, 8 * c,
                   {hole_ext(0, c, 0), data_ext(c, c, 0, h1), data_ext(2 * c, c, 0, h2), hole_ext(3 * c, c, 0),
                    zero_ext(4 * c, 2 * c, 0), data_ext(6 * c, 2 * c, 0, h6)});
    // A sub-range inside one cluster, and unaligned starts.
    expect_extents(img, c + 512, 1024, {data_ext(c + 512, 1024, 0, h1 + 512)});
    expect_extents(img, 3 * c + 512, c, {hole_ext(3 * c + 512, c - 512, 0), zero_ext(4 * c, 512, 0)});
    // Past the first table (no L2 table there yet) to the end.
    expect_extents(img, 6 * c, span + 2 * c, {data_ext(6 * c, 2 * c, 0, h6), hole_ext(8 * c, span, 0)});
    expect_extents(img, span, 8 * c, {hole_ext(span, 8 * c, 0)});
    // A data cluster in the second table.
    write_pattern(img, span + c, c, 4);
    const std::uint64_t h_span = h6 + 2 * c;
    expect_extents(img, span, 4 * c,
                   {hole_ext(span, c, 0), data_ext(span + c, c, 0, h_span), hole_ext(span + 2 * c, 2 * c, 0)});
    // Zero length: nothing to describe.
    expect_extents(img, c, 0, {});
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_DATA_TEST_CASE(extents_of_a_shorter_backing_file, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    e.make_raw("base.raw", 2 * c + 512, 5);
    auto co = e.create_opts(4 * c, l);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    write_pattern(img, 3 * c, c, 6);
    const std::uint64_t h3 = l.fresh_file_size();
    expect_extents(img, 0, 4 * c,
                   {data_ext(0, 2 * c + 512, 1, 0), hole_ext(2 * c + 512, c - 512, 0), data_ext(3 * c, c, 0, h3)});
    // The reads agree: backing data, then zeros past its end.
    const auto got = read_bytes(img, 0, 3 * c);
    BOOST_TEST(first_mismatch(got, 0, 2 * c + 512, 0, 5) == -1);
    BOOST_TEST(first_mismatch(got, 2 * c + 512, 3 * c, 0, 0) == -1);
    // Without a backing file, unallocated means "not present, reads zeros" at depth 0.
    BOOST_TEST_REQUIRE(!img.change_backing_file("", std::nullopt));
    expect_extents(img, 0, 4 * c, {hole_ext(0, 3 * c, 0), data_ext(3 * c, c, 0, h3)});
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// info
// ===========================================================================

BOOST_AUTO_TEST_SUITE(info)

BOOST_AUTO_TEST_CASE(fields_describe_the_image) {
    mem_env e;
    e.make_raw("dir/base.raw", 8 * MiB, 1);
    auto co = e.create_opts(8 * MiB, {4096, 16});
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("dir/img.qed", co);
    auto o = e.open_opts();
    o.need_check_timeout = std::chrono::seconds(30);
    auto img = e.open("dir/img.qed", o);
    auto i = img.img.info();
    BOOST_TEST(i.filename == "dir/img.qed");
    BOOST_TEST((i.format == image_format::qed));
    BOOST_TEST(i.virtual_size == 8 * MiB);
    BOOST_TEST(i.file_size == 4096u + 16u * 4096u);
    BOOST_TEST(!i.read_only);
    BOOST_TEST(i.backend == "memory");
    BOOST_TEST(i.request_alignment == 512u);
    BOOST_TEST(i.cluster_size == 4096u);
    BOOST_TEST(i.table_size == 16u);
    BOOST_TEST(i.header_size == 1u);
    BOOST_TEST(i.l1_table_offset == 4096u);
    BOOST_TEST(i.features == (feature_backing_file | feature_backing_format_no_probe));
    BOOST_TEST(i.compat_features == 0u);
    BOOST_TEST(i.autoclear_features == 0u);
    BOOST_TEST(!i.need_check);
    BOOST_TEST(i.backing_file == "base.raw");
    BOOST_TEST(i.backing_file_full == "dir/base.raw");
    BOOST_TEST((i.backing_format == image_format::raw));
    BOOST_TEST(i.chain_depth == 1u);
    write_pattern(img, 0, 4096, 1);
    BOOST_TEST(img.img.info().file_size == e.file_size("dir/img.qed"));
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(!img.img.is_open());

    // No backing file, read-only, dirty on disk.
    e.create("plain.qed", e.create_opts(MiB, {65536, 1}));
    e.set_need_check("plain.qed");
    auto ro = e.open_opts();
    ro.read_only = true;
    auto p = e.open("plain.qed", ro);
    i = p.img.info();
    BOOST_TEST(i.read_only);
    BOOST_TEST(i.need_check);
    BOOST_TEST(i.features == feature_need_check);
    BOOST_TEST(i.backing_file.empty());
    BOOST_TEST(i.backing_file_full.empty());
    BOOST_TEST(!i.backing_format.has_value());
    BOOST_TEST(i.chain_depth == 0u);
    BOOST_TEST(i.table_size == 1u);
    BOOST_TEST(!p.img.backing().is_open());
    BOOST_TEST_REQUIRE(!p.close());

    // Raw images say what they are.
    e.make_raw("disk.raw", 3 * MiB + 100, 2);
    auto r = e.open("disk.raw");
    i = r.img.info();
    BOOST_TEST((i.format == image_format::raw));
    BOOST_TEST(i.virtual_size == 3 * MiB + 512);
    BOOST_TEST(i.file_size == 3 * MiB + 100);
    BOOST_TEST_REQUIRE(!r.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// change backing file
// ===========================================================================

BOOST_AUTO_TEST_SUITE(change_backing_file)

BOOST_AUTO_TEST_CASE(to_another_file_and_to_none) {
    mem_env e;
    e.make_raw("base1.raw", MiB, 1);
    e.create("base2.qed", e.create_opts(MiB, {4096, 4}));
    {
        auto b = e.open("base2.qed");
        write_pattern(b, 0, 512 * KiB, 2);
        BOOST_TEST_REQUIRE(!b.close());
    }
    auto co = e.create_opts(MiB);
    co.backing_file = "base1.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    {
        auto img = e.open("top.qed");
        write_pattern(img, 64 * KiB, 64 * KiB, 5);
        expect_pattern(img, 0, 64 * KiB, 1, "base1");

        BOOST_TEST_REQUIRE(!img.change_backing_file("base2.qed", image_format::qed));
        expect_pattern(img, 0, 64 * KiB, 2, "base2 right after the change");
        expect_pattern(img, 64 * KiB, 64 * KiB, 5, "own data");
        expect_pattern(img, 512 * KiB, 512 * KiB, 0, "base2's unallocated part");
        auto i = img.img.info();
        BOOST_TEST(i.backing_file == "base2.qed");
        BOOST_TEST(i.chain_depth == 1u);
        BOOST_TEST(i.features == feature_backing_file);
        BOOST_TEST((img.img.backing().info().format == image_format::qed));
        const header h = e.hdr("top.qed");
        BOOST_TEST(h.features == feature_backing_file);
        BOOST_TEST(h.backing_filename_offset == 64u);
        BOOST_TEST(h.backing_filename_size == 9u);
        const auto n = e.bytes("top.qed", 64, 9);
        BOOST_TEST(std::string(n.begin(), n.end()) == "base2.qed");
        BOOST_TEST_REQUIRE(!img.close());
    }
    {
        auto img = e.open("top.qed");
        expect_pattern(img, 0, 64 * KiB, 2, "base2 after reopen");
        BOOST_TEST_REQUIRE(!img.change_backing_file("base1.raw", image_format::raw));
        BOOST_TEST(e.hdr("top.qed").features == (feature_backing_file | feature_backing_format_no_probe));
        expect_pattern(img, 0, 64 * KiB, 1, "base1 again");

        BOOST_TEST_REQUIRE(!img.change_backing_file("", std::nullopt));
        expect_pattern(img, 0, 64 * KiB, 0, "no backing file: zeros");
        expect_pattern(img, 64 * KiB, 64 * KiB, 5, "own data");
        const auto i = img.img.info();
        BOOST_TEST(i.backing_file.empty());
        BOOST_TEST(i.chain_depth == 0u);
        BOOST_TEST(!img.img.backing().is_open());
        const header h = e.hdr("top.qed");
        BOOST_TEST(h.features == 0u);
        BOOST_TEST(h.backing_filename_offset == 64u, "QEMU leaves the offset at 0x40");
        BOOST_TEST(h.backing_filename_size == 0u);
        BOOST_TEST_REQUIRE(!img.close());
    }
    auto img = e.open("top.qed");
    BOOST_TEST(!img.img.backing().is_open());
    expect_pattern(img, 0, 64 * KiB, 0, "still no backing file after reopen");
    expect_pattern(img, 64 * KiB, 64 * KiB, 5, "own data after reopen");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(waits_for_requests_in_flight) {
    // Reads started before the change see the old backing file, reads
    // started after it the new one; none sees a mix.
    mem_env e;
    e.make_raw("old.raw", MiB, 1);
    e.make_raw("new.raw", MiB, 2);
    auto co = e.create_opts(MiB, {4096, 1});
    co.backing_file = "old.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    const unsigned n = 40;
    std::vector<std::vector<std::uint8_t>> before(n, std::vector<std::uint8_t>(8192)), after = before;
    unsigned done = 0, errors = 0;
    auto rd = [&](std::vector<std::uint8_t>& b, std::uint64_t off) {
        img.img.async_read_at(off, boost::asio::buffer(b), [&](std::error_code ec, std::size_t) {
            errors += ec ? 1 : 0;
            ++done;
        });
    };
    for (unsigned i = 0; i < n; ++i) rd(before[i], i * 16384);
    std::error_code change_ec = errc::invalid_argument;
    img.img.async_change_backing_file("new.raw", image_format::raw, [&](std::error_code ec) {
        change_ec = ec;
        ++done;
    });
    for (unsigned i = 0; i < n; ++i) rd(after[i], i * 16384);
    BOOST_TEST_REQUIRE(run_until(
        e.ioc, [&] { return done == 2 * n + 1; }, std::chrono::seconds(10)));
    BOOST_TEST(!change_ec, change_ec.message());
    BOOST_TEST(errors == 0u);
    for (unsigned i = 0; i < n; ++i) {
        BOOST_TEST(first_mismatch(before[i], 0, 8192, i * 16384, 1) == -1, "read " << i << " before the change");
        BOOST_TEST(first_mismatch(after[i], 0, 8192, i * 16384, 2) == -1, "read " << i << " after the change");
    }
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(refused_on_read_only_and_for_a_missing_file) {
    mem_env e;
    e.make_raw("base.raw", MiB, 1);
    auto co = e.create_opts(MiB);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    const auto before = e.all_bytes("top.qed");
    {
        auto ro = e.open_opts();
        ro.read_only = true;
        auto img = e.open("top.qed", ro);
        BOOST_TEST((img.change_backing_file("base.raw", image_format::raw) == errc::read_only));
        BOOST_TEST_REQUIRE(!img.close());
    }
    auto img = e.open("top.qed");
    const auto ec = img.change_backing_file("missing.raw", image_format::raw);
    BOOST_TEST((ec == std::errc::no_such_file_or_directory), ec.message());
    BOOST_TEST(img.img.info().backing_file == "base.raw");
    expect_pattern(img, 0, 64 * KiB, 1, "still the old backing file");
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST((e.all_bytes("top.qed") == before), "a refused change touched the file");
}

BOOST_DATA_TEST_CASE(name_must_fit_in_the_header_cluster, data::make(all_layouts), l) {
    mem_env e;
    e.make_raw("base.raw", MiB, 1);
    auto co = e.create_opts(MiB, l);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    // The longest name that can be switched to atomically: everything after
    // the header's first (512-byte) block. Longer ones would have to be
    // written over the live name, so they are refused.
    const std::string longest(l.cs - 512, 'n');
    e.make_raw(longest, MiB, 3);
    const std::string too_long(l.cs - 63, 'n');
    e.make_raw(too_long, MiB, 4);
    const auto before = e.all_bytes("top.qed");

    BOOST_TEST((img.change_backing_file(too_long, image_format::raw) == errc::backing_name_too_long));
    BOOST_TEST((e.all_bytes("top.qed") == before));
    expect_pattern(img, 0, 4096, 1, "old backing after the refusal");

    BOOST_TEST_REQUIRE(!img.change_backing_file(longest, image_format::raw));
    expect_pattern(img, 0, 4096, 3, "the longest name");
    BOOST_TEST(e.hdr("top.qed").backing_filename_size == l.cs - 512);
    const std::string unsafe(l.cs - 64, 'n');  // fits, but only over the live name
    e.make_raw(unsafe, MiB, 5);
    BOOST_TEST((img.change_backing_file(unsafe, image_format::raw) == errc::backing_name_too_long));
    expect_pattern(img, 0, 4096, 3, "the longest name is still in place");
    BOOST_TEST_REQUIRE(!img.close());
    auto again = e.open("top.qed");
    BOOST_TEST(again.img.info().backing_file == longest);
    expect_pattern(again, 0, 4096, 3, "the longest name after reopen");
    BOOST_TEST_REQUIRE(!again.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// grow
// ===========================================================================

BOOST_AUTO_TEST_SUITE(grow_image)

BOOST_DATA_TEST_CASE(new_space_reads_zeros_and_takes_writes, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t span = l.span();
    const std::uint64_t old_size = span + 512;
    e.create("img.qed", e.create_opts(old_size, l));
    const std::uint64_t new_size = 3 * span;
    {
        auto img = e.open("img.qed");
        write_pattern(img, old_size - 512, 512, 1);
        BOOST_TEST_REQUIRE(!grow(img, new_size));
        BOOST_TEST(img.img.size() == new_size);
        BOOST_TEST(e.hdr("img.qed").image_size == new_size);
        expect_pattern(img, old_size - 512, 512, 1, "the old last sector");
        expect_pattern(img, old_size, 64 * KiB, 0, "right after the old end");
        expect_pattern(img, 2 * span - 4096, 8192, 0, "across a table boundary");
        expect_pattern(img, new_size - 64 * KiB, 64 * KiB, 0, "the new end");
        write_pattern(img, new_size - 512, 512, 2);
        write_pattern(img, old_size, 1024, 3);
        BOOST_TEST_REQUIRE(!grow(img, new_size));  // same size: nothing to do
        BOOST_TEST_REQUIRE(!img.close());
    }
    auto img = e.open("img.qed");
    BOOST_TEST(img.img.size() == new_size);
    expect_pattern(img, new_size - 512, 512, 2, "after reopen");
    expect_pattern(img, old_size, 1024, 3, "after reopen");
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_DATA_TEST_CASE(invalid_sizes_are_refused, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t size = 4 * MiB;
    e.create("img.qed", e.create_opts(size, l));
    auto img = e.open("img.qed");
    const auto before = e.all_bytes("img.qed");
    const std::uint64_t max = max_image_size(l.cs, l.ts);
    BOOST_TEST((grow(img, size - 512) == errc::shrink_not_supported));
    BOOST_TEST((grow(img, 0) == errc::shrink_not_supported));
    BOOST_TEST((grow(img, size + 1) == errc::image_size_unaligned));
    BOOST_TEST((grow(img, size + 4096 + 100) == errc::image_size_unaligned));
    BOOST_TEST((grow(img, max + 512) == errc::image_too_large));
    BOOST_TEST((grow(img, std::numeric_limits<std::uint64_t>::max() / 512 * 512) == errc::image_too_large));
    BOOST_TEST(img.img.size() == size);
    BOOST_TEST((e.all_bytes("img.qed") == before), "a refused grow changed the file");
    BOOST_TEST_REQUIRE(!grow(img, max));  // the very limit is fine
    BOOST_TEST(img.img.size() == max);
    write_pattern(img, max - 4096, 4096, 9);
    expect_pattern(img, max - 4096, 4096, 9, "last cluster of the largest image");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(grown_space_never_exposes_a_larger_backing_file) {
    // The overlay is shorter than its backing file. After growing, the new
    // range must read as zeros (the guest never wrote there): QEMU (since
    // 5.1, "block: truncate: Don't make backing file data visible") writes
    // zeros over it, or refuses the resize when it cannot.
    mem_env e;
    e.make_raw("base.raw", 4 * MiB, 8);
    auto co = e.create_opts(2 * MiB);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    const auto ec = grow(img, 4 * MiB);
    if (!ec) {
        expect_pattern(img, 0, 2 * MiB, 8, "the old range still reads the backing file");
        expect_pattern(img, 2 * MiB, 2 * MiB, 0, "grown range");
    } else {
        BOOST_TEST(img.img.size() == 2 * MiB, "a refused grow left the size changed");
    }
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(grown_space_reads_the_backing_file_where_it_was_visible_before) {
    // The backing file is not larger than the old size: nothing new becomes
    // visible, the grown range reads zeros past the backing file's end.
    mem_env e;
    e.make_raw("base.raw", 2 * MiB, 8);
    auto co = e.create_opts(2 * MiB);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    BOOST_TEST_REQUIRE(!grow(img, 4 * MiB));
    expect_pattern(img, 0, 2 * MiB, 8, "backing data");
    expect_pattern(img, 2 * MiB, 2 * MiB, 0, "past the backing file");
    write_pattern(img, 3 * MiB, 4096, 1);
    const auto got = read_bytes(img, 3 * MiB, 64 * KiB);
    BOOST_TEST(first_mismatch(got, 0, 4096, 3 * MiB, 1) == -1);
    BOOST_TEST(first_mismatch(got, 4096, got.size(), 3 * MiB, 0) == -1, "prefill past the backing file is zeros");
    BOOST_TEST_REQUIRE(!img.close());
}

// Growing an image opened without its backing file (as qed-img resize
// opens it) zeroes the new range in clusters whose first bytes, below the
// old end, come from the backing file: those bytes are copied from it, not
// replaced by zeros. (Before, the last partial cluster's backing data was
// lost: `qemu-io -c "read -P 0xaa 64K 36K"` failed on a 100 KiB overlay of
// a 200 KiB base grown to 200 KiB by qed-img resize.)
BOOST_AUTO_TEST_CASE(grow_without_the_chain_keeps_the_backing_data_below_the_old_end) {
    mem_env e;
    e.make_raw("base.raw", 4 * MiB, 8);
    const std::uint64_t old_size = 2 * MiB + 40 * KiB;  // ends inside a 64 KiB cluster
    auto co = e.create_opts(old_size);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    {
        auto o = e.open_opts();
        o.open_backing = false;
        auto img = e.open("top.qed", o);
        BOOST_TEST_REQUIRE(!grow(img, 4 * MiB));
        BOOST_TEST_REQUIRE(!img.close());
    }
    auto img = e.open("top.qed");
    expect_pattern(img, 0, old_size, 8, "the old range still reads the backing file");
    expect_pattern(img, old_size, 4 * MiB - old_size, 0, "grown range");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// make_empty
// ===========================================================================

BOOST_AUTO_TEST_SUITE(make_empty_image)

BOOST_DATA_TEST_CASE(image_reads_from_backing_again, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs;
    const std::uint64_t span = l.span();
    e.make_raw("base.raw", 4 * c, 4);
    auto co = e.create_opts(span + 4 * c, l);
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    write_pattern(img, 0, 2 * c, 6);
    BOOST_TEST_REQUIRE(!img.write_zeroes(2 * c, c));
    write_pattern(img, span + c, c, 7);  // a second L2 table
    BOOST_TEST(e.file_size("top.qed") > l.fresh_file_size());

    BOOST_TEST_REQUIRE(!make_empty(img));
    BOOST_TEST(e.file_size("top.qed") == l.fresh_file_size(), "make_empty must truncate to header + L1");
    const auto l1 = e.bytes("top.qed", c, static_cast<std::size_t>(l.table_bytes()));
    BOOST_TEST(first_mismatch(l1, 0, l1.size(), 0, 0) == -1, "L1 must be all zeros on disk");
    expect_pattern(img, 0, 4 * c, 4, "the backing file again");
    expect_pattern(img, span, 4 * c, 0, "past the backing file");
    expect_extents(img, 0, 4 * c, {data_ext(0, 4 * c, 1, 0)});
    const auto r = check_image(img);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.leaks == 0u);
    BOOST_TEST(r.allocated_clusters == 0u);

    // The next allocation starts right after the L1 table again.
    write_pattern(img, 3 * c, c, 8);
    settle(img);
    BOOST_TEST(e.l2_entry("top.qed", 3 * c) == l.fresh_file_size());
    BOOST_TEST_REQUIRE(!img.close());
    auto again = e.open("top.qed");
    expect_pattern(again, 0, 3 * c, 4, "backing after reopen");
    expect_pattern(again, 3 * c, c, 8, "new data after reopen");
    expect_clean(again);
    BOOST_TEST_REQUIRE(!again.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// requests: validation, zero length, close
// ===========================================================================

BOOST_AUTO_TEST_SUITE(requests)

// (Not in an anonymous namespace: data-driven cases capture it in lambdas.)
struct opened {
    mem_env e;
    sync_image img{e.ioc, {}};
    std::uint64_t size = MiB;

    explicit opened(image_format f) {
        if (f == image_format::qed) {
            e.create("img", e.create_opts(size, {4096, 1}));
        } else {
            auto co = e.create_opts(size);
            co.format = image_format::raw;
            e.create("img", co);
        }
        auto o = e.open_opts();
        o.format = f;
        img.img = e.open("img", o).img;
    }
    std::error_code read(std::uint64_t off, std::size_t n) {
        std::vector<std::uint8_t> b(n);
        return img.read(off, b.data(), n);
    }
    std::error_code write(std::uint64_t off, std::size_t n) {
        std::vector<std::uint8_t> b(n, 0x5a);
        return img.write(off, b.data(), n);
    }
};

BOOST_DATA_TEST_CASE(unaligned_and_out_of_range_requests, data::make({image_format::qed, image_format::raw}), f) {
    opened o(f);
    const auto before = o.e.all_bytes("img");
    const std::uint64_t size = o.size;
    for (auto [off, len] : {std::pair<std::uint64_t, std::size_t>{100, 512}, {0, 100}, {512, 1000}, {1, 1}}) {
        BOOST_TEST_CONTEXT("unaligned " << off << "+" << len) {
            BOOST_TEST((o.read(off, len) == errc::unaligned_request));
            BOOST_TEST((o.write(off, len) == errc::unaligned_request));
            BOOST_TEST((o.img.write_zeroes(off, len) == errc::unaligned_request));
            BOOST_TEST((o.img.block_status(off, len).first == errc::unaligned_request));
        }
    }
    for (auto [off, len] : {std::pair<std::uint64_t, std::size_t>{size, 512},
                            {size - 512, 1024},
                            {size + 512, 512},
                            {std::numeric_limits<std::uint64_t>::max() / 512 * 512, 512}}) {
        BOOST_TEST_CONTEXT("out of range " << off << "+" << len) {
            BOOST_TEST((o.read(off, len) == errc::out_of_range));
            BOOST_TEST((o.write(off, len) == errc::out_of_range));
            BOOST_TEST((o.img.write_zeroes(off, len) == errc::out_of_range));
            BOOST_TEST((o.img.block_status(off, len).first == errc::out_of_range));
        }
    }
    // Lengths that would wrap around 2^64.
    BOOST_TEST((o.img.write_zeroes(512, std::numeric_limits<std::uint64_t>::max() / 512 * 512) == errc::out_of_range));
    BOOST_TEST(
        (o.img.block_status(512, std::numeric_limits<std::uint64_t>::max() / 512 * 512).first == errc::out_of_range));
    BOOST_TEST((o.e.all_bytes("img") == before), "refused requests changed the file");
    // The last sector itself is fine.
    BOOST_TEST(!o.write(size - 512, 512));
    BOOST_TEST(!o.read(size - 512, 512));
    BOOST_TEST_REQUIRE(!o.img.close());
}

BOOST_DATA_TEST_CASE(zero_length_requests, data::make({image_format::qed, image_format::raw}), f) {
    opened o(f);
    const auto before = o.e.all_bytes("img");
    for (std::uint64_t off : {std::uint64_t{0}, std::uint64_t{4096}, o.size}) {
        BOOST_TEST_CONTEXT("offset " << off) {
            std::uint8_t dummy = 0;
            auto [rec, rn] = await<std::error_code, std::size_t>(
                o.e.ioc, [&](auto h) { o.img.img.async_read_at(off, boost::asio::buffer(&dummy, 0), std::move(h)); });
            BOOST_TEST(!rec, rec.message());
            BOOST_TEST(rn == 0u);
            auto [wec, wn] = await<std::error_code, std::size_t>(
                o.e.ioc, [&](auto h) { o.img.img.async_write_at(off, boost::asio::buffer(&dummy, 0), std::move(h)); });
            BOOST_TEST(!wec, wec.message());
            BOOST_TEST(wn == 0u);
            BOOST_TEST(!o.img.write_zeroes(off, 0));
            auto [sec, ext] = o.img.block_status(off, 0);
            BOOST_TEST(!sec, sec.message());
            BOOST_TEST(ext.empty());
        }
    }
    // Still validated: misaligned or past the end.
    BOOST_TEST((o.read(o.size + 512, 0) == errc::out_of_range));
    BOOST_TEST((o.read(100, 0) == errc::unaligned_request));
    BOOST_TEST((o.write(o.size + 512, 0) == errc::out_of_range));
    BOOST_TEST((o.img.write_zeroes(100, 0) == errc::unaligned_request));
    BOOST_TEST((o.e.all_bytes("img") == before), "zero-length requests changed the file");
    BOOST_TEST_REQUIRE(!o.img.close());
}

BOOST_DATA_TEST_CASE(every_operation_after_close_fails_with_closed, data::make({image_format::qed, image_format::raw}),
                     f) {
    opened o(f);
    BOOST_TEST_REQUIRE(!o.write(0, 4096));
    BOOST_TEST_REQUIRE(!o.img.close());
    BOOST_TEST(!o.img.img.is_open());
    const auto before = o.e.all_bytes("img");
    BOOST_TEST((o.read(0, 512) == errc::closed));
    BOOST_TEST((o.write(0, 512) == errc::closed));
    BOOST_TEST((o.img.write_zeroes(0, 512) == errc::closed));
    BOOST_TEST((o.img.flush() == errc::closed));
    BOOST_TEST((o.img.block_status(0, 512).first == errc::closed));
    BOOST_TEST((o.img.check().first == errc::closed));
    BOOST_TEST((o.img.check(check_options::repair::all).first == errc::closed));
    BOOST_TEST((o.img.change_backing_file("", std::nullopt) == errc::closed));
    BOOST_TEST((o.img.grow(2 * MiB) == errc::closed));
    BOOST_TEST((make_empty(o.img) == errc::closed));
    BOOST_TEST((o.img.close() == errc::closed));
    // Invalid requests on a closed image: closed first.
    BOOST_TEST((o.read(1, 1) == errc::closed));
    BOOST_TEST((o.e.all_bytes("img") == before), "operations after close changed the file");
}

BOOST_AUTO_TEST_CASE(requests_started_before_close_finish_and_later_ones_fail) {
    mem_env e;
    e.create("img.qed", e.create_opts(4 * MiB, {4096, 1}));
    auto img = e.open("img.qed");
    const auto data = pattern(8192, 8192, 3);
    std::vector<std::uint8_t> rbuf(4096, 0xee), late(512);
    std::error_code wec = errc::invalid_argument, rec = errc::invalid_argument, cec = errc::invalid_argument,
                    lec = errc::invalid_argument;
    int done = 0;
    img.img.async_write_at(8192, boost::asio::buffer(data), [&](std::error_code ec, std::size_t) {
        wec = ec;
        ++done;
    });
    img.img.async_read_at(0, boost::asio::buffer(rbuf), [&](std::error_code ec, std::size_t) {
        rec = ec;
        ++done;
    });
    img.img.async_close([&](std::error_code ec) {
        cec = ec;
        ++done;
    });
    img.img.async_read_at(0, boost::asio::buffer(late), [&](std::error_code ec, std::size_t) {
        lec = ec;
        ++done;
    });
    BOOST_TEST_REQUIRE(run_until(
        e.ioc, [&] { return done == 4; }, std::chrono::seconds(10)));
    BOOST_TEST(!wec, wec.message());
    BOOST_TEST(!rec, rec.message());
    BOOST_TEST(!cec, cec.message());
    BOOST_TEST((lec == errc::closed), lec.message());
    BOOST_TEST(!e.need_check_on_disk("img.qed"), "close must leave the image clean");
    auto again = e.open("img.qed");
    expect_pattern(again, 8192, 8192, 3, "the write finished before close");
    BOOST_TEST_REQUIRE(!again.close());
}

BOOST_AUTO_TEST_CASE(requests_and_exclusive_operations_take_effect_in_issue_order) {
    // A write in flight holds back the grow issued after it; a write issued
    // after the grow (beyond the old size) must run after the grow and
    // before the close issued after it -- not behind both.
    mem_env e;
    e.create("img.qed", e.create_opts(MiB, {4096, 1}));
    auto img = e.open("img.qed");
    const auto first = pattern(0, 4096, 4);
    const auto beyond = pattern(MiB + 4096, 4096, 5);
    std::error_code w1 = errc::invalid_argument, gec = errc::invalid_argument, w2 = errc::invalid_argument,
                    cec = errc::invalid_argument;
    std::vector<int> order;
    img.img.async_write_at(0, boost::asio::buffer(first), [&](std::error_code ec, std::size_t) {
        w1 = ec;
        order.push_back(1);
    });
    img.img.async_grow(2 * MiB, [&](std::error_code ec) {
        gec = ec;
        order.push_back(2);
    });
    img.img.async_write_at(MiB + 4096, boost::asio::buffer(beyond), [&](std::error_code ec, std::size_t) {
        w2 = ec;
        order.push_back(3);
    });
    img.img.async_close([&](std::error_code ec) {
        cec = ec;
        order.push_back(4);
    });
    BOOST_TEST_REQUIRE(run_until(
        e.ioc, [&] { return order.size() == 4; }, std::chrono::seconds(10)));
    BOOST_TEST(!w1, w1.message());
    BOOST_TEST(!gec, gec.message());
    BOOST_TEST(!w2, "the write issued after grow and before close: " << w2.message());
    BOOST_TEST(!cec, cec.message());
    BOOST_TEST((order == std::vector<int>{1, 2, 3, 4}));
    auto again = e.open("img.qed");
    BOOST_TEST(again.img.size() == 2 * MiB);
    expect_pattern(again, 0, 4096, 4, "the first write");
    expect_pattern(again, MiB + 4096, 4096, 5, "the write after grow");
    BOOST_TEST_REQUIRE(!again.close());
}

BOOST_AUTO_TEST_CASE(flush_and_fua_reach_the_file) {
    mem_env e;
    auto log = std::make_shared<io_log>();
    e.create("img.qed", e.create_opts(4 * MiB, {4096, 1}));
    e.fs.wrap = [log](std::shared_ptr<block_file> f, const std::string& name) -> std::shared_ptr<block_file> {
        return std::make_shared<recording_file>(std::move(f), log, name);
    };
    auto img = e.open("img.qed");
    write_pattern(img, 0, 4096, 1);  // allocate first: the next writes are in place
    settle(img);                     // (and let its table updates finish)

    auto flushes_after_last_write = [&] {
        std::size_t last_write = 0;
        for (std::size_t i = 0; i < log->size(); ++i)
            if ((*log)[i].what == io_record::write) last_write = i;
        std::size_t n = 0;
        for (std::size_t i = last_write; i < log->size(); ++i) n += (*log)[i].what == io_record::flush;
        return n;
    };
    log->clear();
    write_pattern(img, 0, 4096, 2);
    BOOST_TEST(flushes_after_last_write() == 0u, "a plain in-place write needs no flush");
    BOOST_TEST_REQUIRE(!img.flush());
    BOOST_TEST(flushes_after_last_write() >= 1u, "flush must reach the file");

    log->clear();
    const auto d = pattern(0, 4096, 3);
    std::size_t flushes_seen = 0;
    auto [ec, n] = await<std::error_code, std::size_t>(e.ioc, [&](auto h) {
        img.img.async_write_at(0, boost::asio::buffer(d), write_options{true},
                               [&, h = std::move(h)](std::error_code wec, std::size_t wn) mutable {
                                   flushes_seen = flushes_after_last_write();
                                   std::move(h)(wec, wn);
                               });
    });
    BOOST_TEST(!ec);
    BOOST_TEST(n == 4096u);
    BOOST_TEST(flushes_seen >= 1u, "a FUA write completes only after a flush following its data");

    log->clear();
    flushes_seen = 0;
    auto [zec] = await<std::error_code>(e.ioc, [&](auto h) {
        img.img.async_write_zeroes(0, 4096, zero_options{false, true},
                                   [&, h = std::move(h)](std::error_code zc) mutable {
                                       flushes_seen = flushes_after_last_write();
                                       std::move(h)(zc);
                                   });
    });
    BOOST_TEST(!zec);
    BOOST_TEST(flushes_seen >= 1u, "a FUA write-zeroes completes only after a flush following its zeros");
    expect_pattern(img, 0, 4096, 0, "zeroed");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// where new clusters go
// ===========================================================================

BOOST_AUTO_TEST_SUITE(allocation)

BOOST_DATA_TEST_CASE(new_clusters_are_appended_at_the_end_of_the_file, data::make(all_layouts), l) {
    mem_env e;
    const std::uint64_t c = l.cs, tb = l.table_bytes(), span = l.span();
    e.create("img.qed", e.create_opts(2 * span, l));
    auto img = e.open("img.qed");
    std::uint64_t end = l.fresh_file_size();
    struct step {
        std::uint64_t pos;
        bool new_table;
    };
    // Scattered guest order, two L2 tables.
    const step steps[] = {{5 * c, true}, {0, false}, {span + 3 * c, true}, {2 * c, false}, {span, false}};
    unsigned seed = 1;
    for (const auto& s : steps) {
        BOOST_TEST_CONTEXT("cluster at guest " << s.pos) {
            write_pattern(img, s.pos + 512, 1024, seed);  // partial: prefill and postfill too
            settle(img);
            BOOST_TEST(e.l2_entry("img.qed", s.pos) == end, "the data cluster goes at the old end of the file");
            if (s.new_table) BOOST_TEST(e.l1_entry("img.qed", s.pos / span) == end + c, "then its new L2 table");
            end += c + (s.new_table ? tb : 0);
            BOOST_TEST(e.file_size("img.qed") == end);
            expect_extents(img, s.pos, c, {data_ext(s.pos, c, 0, e.l2_entry("img.qed", s.pos))});
        }
        ++seed;
    }
    // In-place rewrites don't move anything.
    write_pattern(img, 0, c, 20);
    BOOST_TEST(e.file_size("img.qed") == end);
    seed = 1;
    for (const auto& s : steps) {
        if (s.pos == 0) {
            expect_pattern(img, 0, c, 20, "rewritten");
        } else {
            const auto got = read_bytes(img, s.pos, c);
            BOOST_TEST(first_mismatch(got, 0, 512, s.pos, 0) == -1);
            BOOST_TEST(first_mismatch(got, 512, 1536, s.pos, seed) == -1);
            BOOST_TEST(first_mismatch(got, 1536, c, s.pos, 0) == -1);
        }
        ++seed;
    }
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(first_allocating_write_matches_qemu_layout) {
    // qemu-img create -f qed f.qed 1G; qemu-io -c 'write 0 4k': data cluster
    // at 0x50000, then its L2 table at 0x60000 (4 clusters), L1 at 0x10000.
    mem_env e;
    e.create("f.qed", e.create_opts(GiB));
    BOOST_TEST(e.file_size("f.qed") == 327680u);
    auto img = e.open("f.qed");
    write_pattern(img, 0, 4096, 1);
    BOOST_TEST_REQUIRE(!img.close());
    BOOST_TEST(e.u64("f.qed", 0x10000) == 0x60000u);
    for (unsigned i = 1; i < 4; ++i) BOOST_TEST(e.u64("f.qed", 0x10000 + 8 * i) == 0u);
    BOOST_TEST(e.u64("f.qed", 0x60000) == 0x50000u);
    BOOST_TEST(e.u64("f.qed", 0x60008) == 0u);
    BOOST_TEST(e.file_size("f.qed") == 0x60000u + 4 * 0x10000u);
    const auto data = e.bytes("f.qed", 0x50000, 0x10000);
    BOOST_TEST(first_mismatch(data, 0, 4096, 0, 1) == -1);
    BOOST_TEST(first_mismatch(data, 4096, data.size(), 0, 0) == -1);
    // The header is qemu-img's default again after a clean close.
    const std::uint8_t want[64] = {'Q', 'E', 'D', 0,    0, 0, 1, 0, 4, 0, 0, 0, 1, 0, 0, 0,   // magic, cs, ts, hs
                                   0,   0,   0,   0,    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   // features, compat
                                   0,   0,   0,   0,    0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0,   // autoclear, l1 0x10000
                                   0,   0,   0,   0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};  // size 1G, backing
    const auto h = e.bytes("f.qed", 0, 64);
    BOOST_TEST(std::equal(h.begin(), h.end(), want), "header bytes differ from qemu-img's");
}

BOOST_AUTO_TEST_SUITE_END()
