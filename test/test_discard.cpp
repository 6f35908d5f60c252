// SPDX-License-Identifier: BSL-1.0
// image::async_discard: whole data clusters give their storage back in place
// (the file's allocated bytes shrink, the tables don't change), partial
// clusters and unallocated clusters are left alone, a discarded cluster
// hides its backing file (reads zeros), the request checks (read-only,
// alignment, bounds, closed), block status reporting the punched ranges as
// zero, raw images, and a real file checked by qemu-img.
#include <sys/stat.h>

#include <boost/test/unit_test.hpp>

#include "qed/image.hpp"
#include "support/fault_file.hpp"
#include "support/image_fixture.hpp"
#include "support/qemu_tools.hpp"
#include "support/tmp_dir.hpp"

using namespace qed;
using namespace qed::test;

namespace {

constexpr std::uint32_t cs = 65536;

/// Extent of block status that covers guest offset `pos`.
extent extent_at(const std::vector<extent>& ext, std::uint64_t pos) {
    for (const auto& e : ext)
        if (e.offset <= pos && pos < e.offset + e.length) return e;
    BOOST_FAIL("no extent covers " << pos);
    return {};
}

std::uint64_t allocated_bytes(const std::string& path) {
    struct stat st {};
    BOOST_REQUIRE(::stat(path.c_str(), &st) == 0);
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(discard)

BOOST_AUTO_TEST_CASE(whole_clusters_give_their_space_back_partial_ones_stay) {
    mem_env e;
    e.create("img.qed", e.create_opts(4 * MiB, {cs, 4}));
    auto img = e.open("img.qed");
    write_pattern(img, 0, 16 * cs, 5);
    BOOST_REQUIRE(!img.flush());
    const std::uint64_t file_size = e.file_size("img.qed");
    const std::uint64_t used = e.fs.storage("img.qed")->memory_used();

    // From the middle of cluster 1 to the middle of cluster 9: clusters 2..8 go.
    const std::uint64_t from = cs + cs / 2, to = 9 * cs + cs / 2;
    const std::uint64_t l2_before = e.l2_entry("img.qed", 4 * cs);
    BOOST_TEST_REQUIRE(!img.discard(from, to - from));
    BOOST_TEST(e.fs.storage("img.qed")->memory_used() <= used - 7 * cs, "seven clusters' storage given back");
    BOOST_TEST(e.file_size("img.qed") == file_size, "the file keeps its size");
    BOOST_TEST(e.l2_entry("img.qed", 4 * cs) == l2_before, "the cluster stays allocated in its table");

    expect_pattern(img, 0, 2 * cs, 5, "partial cluster before the range and the one before it");
    expect_pattern(img, 2 * cs, 7 * cs, 0, "discarded clusters");
    expect_pattern(img, 9 * cs, 7 * cs, 5, "partial cluster after the range and the rest");
    expect_clean(img);

    // Block status: the punched clusters are present (allocated here) and zero.
    auto [sec, ext] = img.block_status(0, 16 * cs);
    BOOST_TEST_REQUIRE(!sec);
    const extent hole = extent_at(ext, 4 * cs);
    BOOST_TEST(hole.present);
    BOOST_TEST(hole.zero);
    BOOST_TEST(!hole.data);
    BOOST_TEST(hole.offset == 2 * cs);
    BOOST_TEST(hole.length == 7 * cs);
    const extent kept = extent_at(ext, cs + cs / 2);
    BOOST_TEST((kept.data && !kept.zero));
    BOOST_TEST((extent_at(ext, 9 * cs).data));

    // Writing into a discarded cluster works in place.
    write_pattern(img, 4 * cs, 512, 6);
    expect_pattern(img, 4 * cs, 512, 6);
    expect_pattern(img, 4 * cs + 512, cs - 512, 0);
    BOOST_REQUIRE(!img.close());
    auto again = e.open("img.qed");
    expect_pattern(again, 2 * cs, 2 * cs, 0);
    expect_pattern(again, 4 * cs, 512, 6);
    expect_clean(again);
    BOOST_REQUIRE(!again.close());
}

BOOST_AUTO_TEST_CASE(a_range_inside_one_cluster_changes_nothing) {
    mem_env e;
    e.create("img.qed", e.create_opts(MiB, {cs, 1}));
    auto img = e.open("img.qed");
    write_pattern(img, 0, 2 * cs, 3);
    BOOST_REQUIRE(!img.flush());
    const auto before = e.all_bytes("img.qed");
    BOOST_TEST(!img.discard(512, cs - 1024));
    BOOST_TEST(!img.discard(cs / 2, cs));  // straddles two clusters, covers neither
    BOOST_TEST((e.all_bytes("img.qed") == before));
    expect_pattern(img, 0, 2 * cs, 3);
    BOOST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(with_a_backing_file_discarded_clusters_read_zeros_unallocated_ones_the_backing_file) {
    mem_env e;
    e.make_raw("base.raw", MiB, 7);
    auto co = e.create_opts(MiB, {cs, 1});
    co.backing_file = "base.raw";
    co.backing_format = image_format::raw;
    e.create("top.qed", co);
    auto img = e.open("top.qed");
    write_pattern(img, 2 * cs, 2 * cs, 8);  // clusters 2 and 3 in the top image
    BOOST_TEST_REQUIRE(!img.discard(0, 8 * cs));
    expect_pattern(img, 0, 2 * cs, 7, "unallocated clusters still read the backing file");
    expect_pattern(img, 2 * cs, 2 * cs, 0, "discarded clusters hide the backing file");
    expect_pattern(img, 4 * cs, 4 * cs, 7, "unallocated clusters after them");
    auto [sec, ext] = img.block_status(0, 8 * cs);
    BOOST_TEST_REQUIRE(!sec);
    const extent d = extent_at(ext, 2 * cs);
    BOOST_TEST((d.present && d.zero && !d.data && d.depth == 0u));
    BOOST_TEST((extent_at(ext, 0).depth == 1u));
    expect_clean(img);
    BOOST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(the_request_checks_apply) {
    mem_env e;
    e.create("img.qed", e.create_opts(MiB, {cs, 1}));
    {
        auto img = e.open("img.qed");
        write_pattern(img, 0, cs, 2);
        BOOST_TEST((img.discard(100, cs) == errc::unaligned_request));
        BOOST_TEST((img.discard(0, 2 * MiB) == errc::out_of_range));
        BOOST_TEST((img.discard(MiB + 512, 512) == errc::out_of_range));
        BOOST_TEST(!img.discard(MiB, 0));
        BOOST_REQUIRE(!img.close());
        BOOST_TEST((img.discard(0, cs) == errc::closed));
    }
    auto o = e.open_opts();
    o.read_only = true;
    auto ro = e.open("img.qed", o);
    BOOST_TEST((ro.discard(0, cs) == errc::read_only));
    expect_pattern(ro, 0, cs, 2);
    BOOST_REQUIRE(!ro.close());
}

BOOST_AUTO_TEST_CASE(the_last_cluster_counts_as_whole_up_to_the_end_of_the_image) {
    mem_env e;
    const std::uint64_t size = 4 * cs + 8192;  // last cluster: 8 KiB visible
    e.create("img.qed", e.create_opts(size, {cs, 1}));
    auto plan = std::make_shared<fault_plan>();  // fails nothing; counts punches with the writes
    e.fs.wrap = [plan](std::shared_ptr<block_file> f, const std::string&) -> std::shared_ptr<block_file> {
        return std::make_shared<fault_file>(std::move(f), plan);
    };
    auto img = e.open("img.qed");
    write_pattern(img, 0, size, 4);
    BOOST_REQUIRE(!img.flush());
    const long writes = plan->count[fault_plan::write];
    BOOST_TEST_REQUIRE(!img.discard(4 * cs, 8192));
    BOOST_TEST(plan->count[fault_plan::write] == writes + 1, "one hole punched, nothing else written");
    BOOST_TEST_REQUIRE(!img.discard(3 * cs + 512, cs + 8192 - 512));  // cluster 3 partial: left alone
    BOOST_TEST(plan->count[fault_plan::write] == writes + 2);
    expect_pattern(img, 4 * cs, 8192, 0);
    expect_pattern(img, 0, 4 * cs, 4);
    expect_clean(img);
    BOOST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(raw_images_punch_the_range) {
    mem_env e;
    e.make_raw("d.raw", MiB, 9);
    auto o = e.open_opts();
    o.format = image_format::raw;
    auto img = e.open("d.raw", o);
    BOOST_TEST_REQUIRE(!img.discard(64 * KiB, 128 * KiB));
    expect_pattern(img, 0, 64 * KiB, 9);
    expect_pattern(img, 64 * KiB, 128 * KiB, 0);
    expect_pattern(img, 192 * KiB, MiB - 192 * KiB, 9);
    auto [sec, ext] = img.block_status(0, MiB);
    BOOST_TEST_REQUIRE(!sec);
    BOOST_TEST((extent_at(ext, 100 * KiB).zero && !extent_at(ext, 100 * KiB).data));
    BOOST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(a_real_file_shrinks_and_qemu_img_finds_it_clean) {
    tmp_dir d("discard");
    boost::asio::io_context ioc;
    create_options co;
    co.size = 64 * MiB;
    BOOST_REQUIRE(!create(ioc, d / "img.qed", co));
    {
        open_options oo;
        oo.backend = file_backend::threads;
        auto [ec, img] = open(ioc, d / "img.qed", oo);
        BOOST_REQUIRE_MESSAGE(!ec, ec.message());
        write_pattern(img, 0, 16 * MiB, 3);
        BOOST_REQUIRE(!img.flush());
        const std::uint64_t before = allocated_bytes(d / "img.qed");
        BOOST_TEST_REQUIRE(!img.discard(0, 16 * MiB - 4096));  // the last cluster only partly
        BOOST_REQUIRE(!img.flush());
        const std::uint64_t after = allocated_bytes(d / "img.qed");
        BOOST_TEST_MESSAGE("allocated " << before << " -> " << after << " bytes");
        BOOST_TEST(after + 15 * MiB <= before, "du shrinks by the discarded clusters");
        expect_pattern(img, 0, 16 * MiB - 64 * KiB, 0);
        expect_pattern(img, 16 * MiB - 64 * KiB, 64 * KiB, 3);
        auto [sec, ext] = img.block_status(0, 16 * MiB);
        BOOST_TEST_REQUIRE(!sec);
        BOOST_TEST((extent_at(ext, MiB).zero && !extent_at(ext, MiB).data));
        BOOST_TEST((extent_at(ext, 16 * MiB - 1024).data));
        BOOST_REQUIRE(!img.close());
    }
    if (!qemu_available()) return;
    const auto r = qemu_img(d.path(), "check -f qed img.qed");
    BOOST_TEST(r.exit_code == 0, r.output);
    const auto io = qemu_io(d.path(), "img.qed", {"read -P 0 0 16320k", "read -P 0 16M 1M"});
    BOOST_TEST(io.exit_code == 0, io.output);
    BOOST_TEST(io.output.find("Pattern verification failed") == std::string::npos, io.output);
}

BOOST_AUTO_TEST_SUITE_END()
