// SPDX-License-Identifier: BSL-1.0
// The QED on-disk format: header encoding, constants, validation, the
// maximum image size and the geometry helpers (pure computation, no I/O).
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "format/layout.hpp"
#include "qed/error.hpp"
#include "qed/format.hpp"
#include "qed/image.hpp"
#include "support/memory_fs.hpp"
#include "support/sync.hpp"

namespace data = boost::unit_test::data;

namespace {

// Every valid cluster size and table size.
const std::vector<std::uint32_t> all_cluster_sizes = {1u << 12, 1u << 13, 1u << 14, 1u << 15, 1u << 16,
                                                      1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21,
                                                      1u << 22, 1u << 23, 1u << 24, 1u << 25, 1u << 26};
const std::vector<std::uint32_t> all_table_sizes = {1, 2, 4, 8, 16};

std::uint8_t byte_at(const std::array<std::byte, qed::header_struct_size>& b, std::size_t i) {
    return std::to_integer<std::uint8_t>(b[i]);
}

/// What `qemu-img create -f qed x 1G` writes: a valid baseline.
qed::header baseline() {
    qed::header h;
    h.cluster_size = 65536;
    h.table_size = 4;
    h.header_size = 1;
    h.l1_table_offset = 65536;
    h.image_size = 1ull << 30;
    return h;
}
/// File size of the baseline image: header cluster + 4-cluster L1 table.
constexpr std::uint64_t baseline_file = 65536 + 4 * 65536;

std::error_code check(const qed::header& h, std::uint64_t file_size, std::string* detail = nullptr) {
    return qed::validate(h, file_size, detail);
}

__extension__ typedef unsigned __int128 u128;

/// entries^2 * cluster_size in 128 bits, capped at max_addressable_size.
std::uint64_t reference_max(std::uint32_t cs, std::uint32_t ts) {
    const u128 entries = static_cast<u128>(cs) * ts / 8;
    const u128 bytes = entries * entries * cs;
    const u128 cap = qed::max_addressable_size;
    return static_cast<std::uint64_t>(bytes < cap ? bytes : cap);
}

qed::header header_for(std::uint32_t cs, std::uint32_t ts) {
    qed::header h;
    h.cluster_size = cs;
    h.table_size = ts;
    h.header_size = 1;
    h.l1_table_offset = cs;
    h.image_size = 0;
    return h;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(constants)

BOOST_AUTO_TEST_CASE(values_match_the_spec) {
    BOOST_TEST(qed::magic == 0x00444551u);
    BOOST_TEST(qed::min_cluster_size == 4096u);
    BOOST_TEST(qed::max_cluster_size == 64u * 1024 * 1024);
    BOOST_TEST(qed::default_cluster_size == 65536u);
    BOOST_TEST(qed::min_table_size == 1u);
    BOOST_TEST(qed::max_table_size == 16u);
    BOOST_TEST(qed::default_table_size == 4u);
    BOOST_TEST(qed::sector_size == 512u);
    BOOST_TEST(qed::header_struct_size == 64u);
    BOOST_TEST(qed::zero_cluster_entry == 1u);
    BOOST_TEST(static_cast<std::uint64_t>(qed::feature_backing_file) == 0x1u);
    BOOST_TEST(static_cast<std::uint64_t>(qed::feature_need_check) == 0x2u);
    BOOST_TEST(static_cast<std::uint64_t>(qed::feature_backing_format_no_probe) == 0x4u);
    BOOST_TEST(qed::known_features == 0x7u);
    BOOST_TEST(qed::known_compat_features == 0u);
    BOOST_TEST(qed::known_autoclear_features == 0u);
    // INT64_MAX rounded down to a sector.
    BOOST_TEST(qed::max_addressable_size == 0x7fff'ffff'ffff'fe00ull);
    BOOST_TEST(qed::max_addressable_size % qed::sector_size == 0u);
    BOOST_TEST(qed::max_addressable_size <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
    BOOST_TEST(qed::max_addressable_size + qed::sector_size >
               static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
}

BOOST_AUTO_TEST_CASE(default_header_is_qemu_default) {
    const qed::header h;
    BOOST_TEST(h.magic == qed::magic);
    BOOST_TEST(h.cluster_size == 65536u);
    BOOST_TEST(h.table_size == 4u);
    BOOST_TEST(h.header_size == 1u);
    BOOST_TEST(h.features == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(encoding)

BOOST_AUTO_TEST_CASE(magic_bytes_are_QED_nul) {
    const auto b = qed::encode(qed::header{});
    BOOST_TEST(byte_at(b, 0) == 'Q');
    BOOST_TEST(byte_at(b, 1) == 'E');
    BOOST_TEST(byte_at(b, 2) == 'D');
    BOOST_TEST(byte_at(b, 3) == 0);
}

BOOST_AUTO_TEST_CASE(exact_little_endian_layout) {
    qed::header h;
    h.magic = 0x00444551;
    h.cluster_size = 0x04030201;
    h.table_size = 0x08070605;
    h.header_size = 0x0c0b0a09;
    h.features = 0x1817161514131211ull;
    h.compat_features = 0x2827262524232221ull;
    h.autoclear_features = 0x3837363534333231ull;
    h.l1_table_offset = 0x4847464544434241ull;
    h.image_size = 0x5857565554535251ull;
    h.backing_filename_offset = 0x64636261;
    h.backing_filename_size = 0x74737271;
    const auto b = qed::encode(h);
    const std::uint8_t expected[64] = {
        0x51, 0x45, 0x44, 0x00,                          // magic
        0x01, 0x02, 0x03, 0x04,                          // cluster_size
        0x05, 0x06, 0x07, 0x08,                          // table_size
        0x09, 0x0a, 0x0b, 0x0c,                          // header_size
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,  // features
        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,  // compat_features
        0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38,  // autoclear_features
        0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,  // l1_table_offset
        0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,  // image_size
        0x61, 0x62, 0x63, 0x64,                          // backing_filename_offset
        0x71, 0x72, 0x73, 0x74,                          // backing_filename_size
    };
    for (std::size_t i = 0; i < 64; ++i) {
        BOOST_TEST_CONTEXT("byte " << i) {
            BOOST_TEST(byte_at(b, i) == expected[i]);
        }
    }
    // And decoding those bytes gives the fields back, whatever the host order.
    std::array<std::byte, 64> raw{};
    for (std::size_t i = 0; i < 64; ++i) raw[i] = static_cast<std::byte>(expected[i]);
    BOOST_TEST((qed::decode(raw) == h));
}

BOOST_AUTO_TEST_CASE(qemu_img_default_header_bytes) {
    // The header of `qemu-img create -f qed f.qed 1G` (REFERENCE.md).
    const auto b = qed::encode(baseline());
    BOOST_TEST(byte_at(b, 4) == 0x00);
    BOOST_TEST(byte_at(b, 5) == 0x00);
    BOOST_TEST(byte_at(b, 6) == 0x01);   // cluster_size 0x10000
    BOOST_TEST(byte_at(b, 8) == 0x04);   // table_size 4
    BOOST_TEST(byte_at(b, 12) == 0x01);  // header_size 1
    BOOST_TEST(byte_at(b, 42) == 0x01);  // l1_table_offset 0x10000
    BOOST_TEST(byte_at(b, 51) == 0x40);  // image_size 0x40000000
    for (std::size_t i : {16, 24, 32, 56, 60}) BOOST_TEST(byte_at(b, i) == 0);
}

BOOST_AUTO_TEST_CASE(round_trip_many_headers) {
    std::uint64_t x = 0x9e3779b97f4a7c15ull;
    auto next = [&x] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return x;
    };
    for (int i = 0; i < 1000; ++i) {
        qed::header h;
        h.magic = static_cast<std::uint32_t>(next());
        h.cluster_size = static_cast<std::uint32_t>(next());
        h.table_size = static_cast<std::uint32_t>(next());
        h.header_size = static_cast<std::uint32_t>(next());
        h.features = next();
        h.compat_features = next();
        h.autoclear_features = next();
        h.l1_table_offset = next();
        h.image_size = next();
        h.backing_filename_offset = static_cast<std::uint32_t>(next());
        h.backing_filename_size = static_cast<std::uint32_t>(next());
        const auto bytes = qed::encode(h);
        BOOST_TEST_REQUIRE((qed::decode(bytes) == h));
        // encode(decode(b)) == b as well.
        const auto again = qed::encode(qed::decode(bytes));
        BOOST_TEST_REQUIRE(std::memcmp(again.data(), bytes.data(), 64) == 0);
    }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(validation)

BOOST_AUTO_TEST_CASE(baseline_is_valid) {
    std::string detail = "untouched";
    BOOST_TEST(!check(baseline(), baseline_file, &detail));
    BOOST_TEST(!check(baseline(), baseline_file + 12345));
    // Known features, compat and autoclear bits don't make it invalid.
    auto h = baseline();
    h.features = qed::feature_need_check;
    BOOST_TEST(!check(h, baseline_file));
    h.compat_features = ~0ull;     // unknown compat bits: ignored
    h.autoclear_features = ~0ull;  // unknown autoclear bits: cleared on open, not an error
    BOOST_TEST(!check(h, baseline_file));
}

BOOST_AUTO_TEST_CASE(bad_magic) {
    for (std::uint32_t m : {0u, 0x00444552u, 0x51454400u, 0xffffffffu}) {
        auto h = baseline();
        h.magic = m;
        BOOST_TEST((check(h, baseline_file) == qed::errc::bad_magic));
    }
}

BOOST_AUTO_TEST_CASE(file_too_small) {
    // A file shorter than the 64-byte header struct can't hold a header.
    for (std::uint64_t size : {0ull, 1ull, 32ull, 63ull}) {
        BOOST_TEST_CONTEXT("file size " << size) {
            BOOST_TEST((check(baseline(), size) == qed::errc::file_too_small));
        }
    }
}

BOOST_AUTO_TEST_CASE(open_of_tiny_file_reports_file_too_small) {
    // The same check where it matters: opening a file shorter than 64 bytes.
    boost::asio::io_context ioc;
    qed::test::memory_fs fs(ioc.get_executor());
    const auto b = qed::encode(baseline());
    fs.storage("tiny.qed")->write(0, std::span<const std::byte>(b.data(), 32));
    qed::open_options o;
    o.opener = fs.opener();
    o.format = qed::image_format::qed;
    auto [ec, img] = qed::test::open(ioc, "tiny.qed", o);
    BOOST_TEST((ec == qed::errc::file_too_small), ec.message());
}

BOOST_AUTO_TEST_CASE(unknown_feature_bits_named_in_detail) {
    struct c {
        std::uint64_t features;
        std::string named;
    };
    for (const c& k : {c{0x8, "0x8"}, c{0x8 | 0x1 | 0x2, "0x8"}, c{0x10, "0x10"}, c{1ull << 63, "0x8000000000000000"},
                       c{0xf0, "0xf0"}}) {
        auto h = baseline();
        h.features = k.features;
        std::string detail;
        BOOST_TEST((check(h, baseline_file, &detail) == qed::errc::unknown_features));
        BOOST_TEST(detail.find(k.named) != std::string::npos, "detail '" << detail << "' names " << k.named);
    }
}

BOOST_DATA_TEST_CASE(invalid_cluster_size,
                     data::make({0u, 1u, 512u, 2048u, 4095u, 4097u, 3u * 4096, 65536u + 4096, 100000u,
                                 128u * 1024 * 1024, 0x80000000u, 0xffffffffu}),
                     cs) {
    auto h = baseline();
    h.cluster_size = cs;
    std::string detail;
    BOOST_TEST((check(h, baseline_file, &detail) == qed::errc::invalid_cluster_size));
    BOOST_TEST(!detail.empty());
    BOOST_TEST(!qed::is_valid_cluster_size(cs));
}

BOOST_AUTO_TEST_CASE(cluster_size_predicate) {
    for (auto cs : all_cluster_sizes) BOOST_TEST(qed::is_valid_cluster_size(cs));
    // 64-bit values that a 32-bit truncation would make look valid.
    BOOST_TEST(!qed::is_valid_cluster_size((1ull << 32) + 4096));
    BOOST_TEST(!qed::is_valid_cluster_size(1ull << 32));
    BOOST_TEST(!qed::is_valid_cluster_size(1ull << 40));
}

BOOST_DATA_TEST_CASE(invalid_table_size, data::make({0u, 3u, 5u, 6u, 7u, 9u, 15u, 17u, 32u, 64u, 0xffffffffu}), ts) {
    auto h = baseline();
    h.table_size = ts;
    BOOST_TEST((check(h, baseline_file) == qed::errc::invalid_table_size));
    BOOST_TEST(!qed::is_valid_table_size(ts));
}

BOOST_AUTO_TEST_CASE(table_size_predicate) {
    for (auto ts : all_table_sizes) BOOST_TEST(qed::is_valid_table_size(ts));
    BOOST_TEST(!qed::is_valid_table_size((1ull << 32) + 4));
}

BOOST_AUTO_TEST_CASE(header_size_zero) {
    auto h = baseline();
    h.header_size = 0;
    BOOST_TEST((check(h, baseline_file) == qed::errc::invalid_header_size));
}

BOOST_AUTO_TEST_CASE(header_size_huge_does_not_overflow) {
    // 0xffffffff clusters of 64 MiB: a 32-bit product would wrap to a small
    // number and pass; the header is far larger than any file here.
    for (std::uint32_t cs : {4096u, 65536u, 64u * 1024 * 1024}) {
        for (std::uint32_t hs : {0xffffffffu, 0x80000000u, 0x10001u}) {
            auto h = baseline();
            h.cluster_size = cs;
            h.header_size = hs;
            h.l1_table_offset = std::uint64_t{cs} * hs;  // right after the (huge) header
            BOOST_TEST_CONTEXT("cluster_size " << cs << " header_size " << hs) {
                BOOST_TEST((check(h, baseline_file) == qed::errc::invalid_header_size));
                // Even a 1 TiB file can't hold these headers, and above 4 GiB
                // they are too large anyway (QEMU's limit) (except the
                // smallest: 0x10001 clusters of 4K fit, and then the L1 table
                // after them is what's missing).
                const std::uint64_t header_bytes = std::uint64_t{cs} * hs;
                if (header_bytes > (1ull << 40) || header_bytes > qed::max_header_bytes)
                    BOOST_TEST((check(h, 1ull << 40) == qed::errc::invalid_header_size));
                else
                    BOOST_TEST((check(h, header_bytes) == qed::errc::l1_table_past_eof));
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(header_and_name_limits) {
    // The header area may be up to 4 GiB - 1 (QEMU's limit), the name up to 1 MiB.
    auto h = baseline();
    h.cluster_size = 4096;
    h.header_size = static_cast<std::uint32_t>(qed::max_header_bytes / 4096);  // 4 GiB - 4 KiB
    h.l1_table_offset = std::uint64_t{h.header_size} * 4096;
    const std::uint64_t file = h.l1_table_offset + 4096 * h.table_size;
    BOOST_TEST(!check(h, file));
    h.features = qed::feature_backing_file;
    h.backing_filename_offset = 64;
    h.backing_filename_size = qed::max_backing_name_size;
    BOOST_TEST(!check(h, file));
    h.backing_filename_size = qed::max_backing_name_size + 1;
    std::string detail;
    BOOST_TEST((check(h, file, &detail) == qed::errc::backing_name_too_long));
    BOOST_TEST(detail.find("backing file name length") != std::string::npos, detail);
    h.features = 0;
    h.header_size += 1;  // exactly 4 GiB
    h.l1_table_offset += 4096;
    BOOST_TEST((check(h, file + 4096, &detail) == qed::errc::invalid_header_size));
    BOOST_TEST(detail.find("QED header size is too large") != std::string::npos, detail);
}

BOOST_AUTO_TEST_CASE(header_size_larger_than_one_is_fine) {
    auto h = baseline();
    h.header_size = 3;
    h.l1_table_offset = 3 * 65536;
    BOOST_TEST(!check(h, 3 * 65536 + 4 * 65536));
    BOOST_TEST(
        (check(h, 2 * 65536) == qed::errc::invalid_header_size || check(h, 2 * 65536) == qed::errc::l1_table_past_eof));
}

BOOST_DATA_TEST_CASE(image_size_not_sector_multiple,
                     data::make({1ull, 511ull, 513ull, (1ull << 30) + 1, (1ull << 30) - 256}), size) {
    auto h = baseline();
    h.image_size = size;
    BOOST_TEST((check(h, baseline_file) == qed::errc::image_size_unaligned));
}

BOOST_AUTO_TEST_CASE(image_size_zero_is_valid) {
    auto h = baseline();
    h.image_size = 0;
    BOOST_TEST(!check(h, baseline_file));
}

BOOST_AUTO_TEST_CASE(image_size_too_large) {
    auto h = baseline();
    const std::uint64_t max = qed::max_image_size(h.cluster_size, h.table_size);
    BOOST_TEST(max == 64ull << 40);  // 64 TiB at 64K clusters, table_size 4
    h.image_size = max;
    BOOST_TEST(!check(h, baseline_file));
    h.image_size = max + 512;
    BOOST_TEST((check(h, baseline_file) == qed::errc::image_too_large));
    h.image_size = qed::max_addressable_size;
    BOOST_TEST((check(h, baseline_file) == qed::errc::image_too_large));
    // Beyond INT64_MAX even where the L1 table could address it.
    h.cluster_size = 64u << 20;
    h.l1_table_offset = 64u << 20;
    h.image_size = qed::max_addressable_size + 512;
    BOOST_TEST((check(h, 5ull * (64u << 20)) == qed::errc::image_too_large));
    h.image_size = 0xffff'ffff'ffff'fe00ull;
    BOOST_TEST((check(h, 5ull * (64u << 20)) == qed::errc::image_too_large));
    h.image_size = qed::max_addressable_size;
    BOOST_TEST(!check(h, 5ull * (64u << 20)));
}

BOOST_AUTO_TEST_CASE(l1_offset_misaligned) {
    for (std::uint64_t off : {65536ull + 512, 65536ull + 4096, 65536ull * 2 - 8, 65537ull}) {
        auto h = baseline();
        h.l1_table_offset = off;
        BOOST_TEST((check(h, baseline_file + 65536) == qed::errc::invalid_l1_offset));
    }
}

BOOST_AUTO_TEST_CASE(l1_inside_header) {
    auto h = baseline();
    h.l1_table_offset = 0;
    BOOST_TEST((check(h, baseline_file) == qed::errc::invalid_l1_offset));
    h.header_size = 2;
    h.l1_table_offset = 65536;  // inside the second header cluster
    BOOST_TEST((check(h, baseline_file + 65536) == qed::errc::invalid_l1_offset));
}

BOOST_AUTO_TEST_CASE(l1_table_past_eof) {
    auto h = baseline();
    BOOST_TEST((check(h, baseline_file - 1) == qed::errc::l1_table_past_eof));
    BOOST_TEST((check(h, baseline_file - 65536) == qed::errc::l1_table_past_eof));
    BOOST_TEST((check(h, 65536 + 1) == qed::errc::l1_table_past_eof));
    // Offsets far beyond the file, where offset + table size would overflow.
    for (std::uint64_t off : {1ull << 40, 0xffff'ffff'ffff'0000ull, 0xffff'ffff'fffc'0000ull}) {
        h.l1_table_offset = off;
        BOOST_TEST_CONTEXT("l1 at " << off) {
            BOOST_TEST((check(h, baseline_file) == qed::errc::l1_table_past_eof));
        }
    }
    // A file that is huge but still ends before the table does.
    h.l1_table_offset = 0xffff'ffff'ffff'0000ull;
    BOOST_TEST((check(h, 0xffff'ffff'ffff'ffffull) == qed::errc::l1_table_past_eof));
}

BOOST_AUTO_TEST_CASE(l1_table_ending_exactly_at_eof_is_valid) {
    // Also with a trailing partial cluster after the table.
    BOOST_TEST(!check(baseline(), baseline_file));
    BOOST_TEST(!check(baseline(), baseline_file + 100));
}

BOOST_AUTO_TEST_CASE(backing_name_outside_header) {
    auto h = baseline();
    h.features = qed::feature_backing_file;
    h.backing_filename_offset = 64;
    h.backing_filename_size = 8;
    BOOST_TEST(!check(h, baseline_file));
    h.backing_filename_offset = 65536 - 8;  // ends exactly at the end of the header
    BOOST_TEST(!check(h, baseline_file));
    h.backing_filename_offset = 65536 - 7;
    BOOST_TEST((check(h, baseline_file) == qed::errc::backing_name_out_of_range));
    h.backing_filename_offset = 64;
    h.backing_filename_size = 65536;
    BOOST_TEST((check(h, baseline_file) == qed::errc::backing_name_out_of_range));
    // A 32-bit sum would wrap to a small value and pass.
    h.backing_filename_offset = 0xffffffffu;
    h.backing_filename_size = 0xffffffffu;
    BOOST_TEST((check(h, baseline_file) == qed::errc::backing_name_out_of_range));
    h.backing_filename_offset = 64;
    h.backing_filename_size = 0xffffffc0u;  // 64 + size == 2^32
    BOOST_TEST((check(h, baseline_file) == qed::errc::backing_name_out_of_range));
    // The name fields are not used without the backing-file feature.
    h.features = 0;
    BOOST_TEST(!check(h, baseline_file));
    // A second header cluster makes room for a long name.
    h.features = qed::feature_backing_file;
    h.header_size = 2;
    h.l1_table_offset = 2 * 65536;
    h.backing_filename_offset = 64;
    h.backing_filename_size = 2 * 65536 - 64;
    BOOST_TEST(!check(h, baseline_file + 65536));
}

BOOST_AUTO_TEST_CASE(detail_filled_for_every_failure) {
    auto h = baseline();
    h.image_size = 513;
    std::string detail;
    BOOST_TEST((check(h, baseline_file, &detail) == qed::errc::image_size_unaligned));
    BOOST_TEST(!detail.empty());
    detail.clear();
    h = baseline();
    h.l1_table_offset = 3;
    BOOST_TEST((check(h, baseline_file, &detail) == qed::errc::invalid_l1_offset));
    BOOST_TEST(!detail.empty());
}

BOOST_DATA_TEST_CASE(table_size_one_tables_valid, data::make(all_cluster_sizes), cs) {
    // QEMU bug 7: a one-cluster L1 table ending exactly at EOF is valid.
    auto h = header_for(cs, 1);
    h.image_size = std::min<std::uint64_t>(qed::max_image_size(cs, 1), 1ull << 30);
    BOOST_TEST(!check(h, 2ull * cs));
    BOOST_TEST((check(h, 2ull * cs - 1) == qed::errc::l1_table_past_eof));
    const qed::geometry g(h);
    BOOST_TEST(g.valid_table_offset(cs, 2ull * cs));
    BOOST_TEST(g.valid_table_offset(2ull * cs, 3ull * cs));
    BOOST_TEST(!g.valid_table_offset(2ull * cs, 2ull * cs));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(max_size)

BOOST_DATA_TEST_CASE(no_overflow_for_any_geometry, data::make(all_cluster_sizes) * data::make(all_table_sizes), cs,
                     ts) {
    const std::uint64_t expect = reference_max(cs, ts);
    BOOST_TEST(qed::max_image_size(cs, ts) == expect);
    BOOST_TEST(qed::max_image_size(cs, ts) > 0u);
    BOOST_TEST(qed::max_image_size(cs, ts) % qed::sector_size == 0u);
    // The maximum itself is a valid image size; one sector more is not.
    auto h = header_for(cs, ts);
    const std::uint64_t file = std::uint64_t{cs} * (1 + ts);
    h.image_size = expect;
    BOOST_TEST(!check(h, file));
    h.image_size = expect + qed::sector_size;
    BOOST_TEST((check(h, file) == qed::errc::image_too_large));
}

BOOST_AUTO_TEST_CASE(qemu_bug_4_large_clusters) {
    // 4 MiB clusters, table_size 4: entries = 2^21, entries^2 * cs = 2^64,
    // which wraps to 0 in 64 bits. The true value is capped at INT64_MAX.
    BOOST_TEST(qed::max_image_size(4u << 20, 4) == qed::max_addressable_size);
    BOOST_TEST(qed::max_image_size(8u << 20, 4) == qed::max_addressable_size);
    BOOST_TEST(qed::max_image_size(64u << 20, 4) == qed::max_addressable_size);
    BOOST_TEST(qed::max_image_size(64u << 20, 16) == qed::max_addressable_size);
    // Small geometries are exact.
    BOOST_TEST(qed::max_image_size(4096, 1) == 512ull * 512 * 4096);
    BOOST_TEST(qed::max_image_size(65536, 4) == 32768ull * 32768 * 65536);
    BOOST_TEST(qed::max_image_size(65536, 16) == 131072ull * 131072 * 65536);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(geometry_helpers)

BOOST_DATA_TEST_CASE(derived_constants, data::make(all_cluster_sizes) * data::make(all_table_sizes), cs, ts) {
    auto h = header_for(cs, ts);
    h.header_size = 3;
    const qed::geometry g(h);
    BOOST_TEST(g.cluster_size == cs);
    BOOST_TEST(g.table_size == ts);
    BOOST_TEST((1ull << g.cluster_bits) == cs);
    BOOST_TEST(g.table_entries == std::uint64_t{cs} * ts / 8);
    BOOST_TEST((1ull << g.l2_bits) == g.table_entries);
    BOOST_TEST(g.table_bytes == std::uint64_t{cs} * ts);
    BOOST_TEST(g.header_bytes == 3ull * cs);
    BOOST_TEST(g.l2_span() == std::uint64_t{g.table_entries} * cs);
}

BOOST_DATA_TEST_CASE(index_decomposition, data::make(all_cluster_sizes) * data::make(all_table_sizes), cs, ts) {
    const qed::geometry g(header_for(cs, ts));
    const std::uint64_t max = qed::max_image_size(cs, ts);
    const std::uint64_t positions[] = {0,
                                       1,
                                       cs - 1ull,
                                       cs,
                                       cs + 7ull,
                                       g.l2_span() - 1,
                                       g.l2_span(),
                                       g.l2_span() + cs,
                                       3 * g.l2_span() + 5 * std::uint64_t{cs} + 123,
                                       max - 1,
                                       max / 2 + 4097};
    for (std::uint64_t pos : positions) {
        BOOST_TEST_CONTEXT("pos " << pos) {
            const std::uint64_t l1 = g.l1_index(pos);
            const std::uint64_t l2 = g.l2_index(pos);
            const std::uint64_t in = g.offset_in_cluster(pos);
            BOOST_TEST(l2 < g.table_entries);
            BOOST_TEST(in < cs);
            BOOST_TEST(((l1 << (g.cluster_bits + g.l2_bits)) | (l2 << g.cluster_bits) | in) == pos);
            BOOST_TEST(g.start_of_cluster(pos) == pos - in);
            BOOST_TEST(l1 == pos / g.l2_span());
            BOOST_TEST(l2 == (pos % g.l2_span()) / cs);
            if (pos < max) BOOST_TEST(l1 < g.table_entries);  // every guest byte has an L1 slot
        }
    }
}

BOOST_DATA_TEST_CASE(clusters_for_is_a_true_ceiling, data::make(all_cluster_sizes) * data::make(all_table_sizes), cs,
                     ts) {
    // QEMU bug 1: qed_bytes_to_clusters divides by cluster_size - 1, so
    // k * cluster_size bytes count as more than k clusters once k >= cs - 1.
    const qed::geometry g(header_for(cs, ts));
    const std::uint64_t c = cs;
    BOOST_TEST(g.clusters_for(0) == 0u);
    BOOST_TEST(g.clusters_for(1) == 1u);
    BOOST_TEST(g.clusters_for(512) == 1u);
    BOOST_TEST(g.clusters_for(c - 1) == 1u);
    BOOST_TEST(g.clusters_for(c) == 1u);
    BOOST_TEST(g.clusters_for(c + 1) == 2u);
    for (std::uint64_t k : std::initializer_list<std::uint64_t>{2, 7, c - 2, c - 1, c, c + 1, 2 * c, 1000003}) {
        BOOST_TEST_CONTEXT("k " << k) {
            BOOST_TEST(g.clusters_for(k * c) == k);
            BOOST_TEST(g.clusters_for(k * c - 1) == k);
            BOOST_TEST(g.clusters_for(k * c + 1) == k + 1);
            BOOST_TEST(g.clusters_for(k * c - 512) == k);
        }
    }
    // A whole L2 table's worth and the largest image.
    BOOST_TEST(g.clusters_for(g.l2_span()) == g.table_entries);
    const std::uint64_t max = qed::max_image_size(cs, ts);
    BOOST_TEST(g.clusters_for(max) == max / c + (max % c != 0));
}

BOOST_AUTO_TEST_CASE(round_up_and_start) {
    const qed::geometry g(header_for(65536, 4));
    BOOST_TEST(g.round_up(0) == 0u);
    BOOST_TEST(g.round_up(1) == 65536u);
    BOOST_TEST(g.round_up(65536) == 65536u);
    BOOST_TEST(g.round_up(65537) == 131072u);
    BOOST_TEST(g.start_of_cluster(131071) == 65536u);
    BOOST_TEST(g.offset_in_cluster(131071) == 65535u);
}

BOOST_AUTO_TEST_CASE(valid_offsets) {
    auto h = baseline();
    h.header_size = 2;
    const qed::geometry g(h);
    const std::uint64_t end = 10 * 65536;
    // Data clusters: aligned, after the header, before EOF.
    BOOST_TEST(g.valid_cluster_offset(2 * 65536, end));
    BOOST_TEST(g.valid_cluster_offset(9 * 65536, end));
    BOOST_TEST(!g.valid_cluster_offset(10 * 65536, end));
    BOOST_TEST(!g.valid_cluster_offset(65536, end));  // in the header
    BOOST_TEST(!g.valid_cluster_offset(0, end));
    BOOST_TEST(!g.valid_cluster_offset(2 * 65536 + 512, end));
    BOOST_TEST(!g.valid_cluster_offset(~0ull << 16, end));
    // Tables: the whole table (4 clusters) inside the file.
    BOOST_TEST(g.valid_table_offset(6 * 65536, end));
    BOOST_TEST(!g.valid_table_offset(7 * 65536, end));
    BOOST_TEST(!g.valid_table_offset(65536, end));
    BOOST_TEST(!g.valid_table_offset(6 * 65536 + 4096, end));
    BOOST_TEST(!g.valid_table_offset(~0ull << 16, end));  // offset + size would overflow
    BOOST_TEST(!g.valid_table_offset(11 * 65536, end));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(errors)

BOOST_AUTO_TEST_CASE(category_and_messages) {
    BOOST_TEST(std::string(qed::category().name()) == "qed");
    std::set<std::string> seen;
    for (int v = static_cast<int>(qed::errc::bad_magic); v <= static_cast<int>(qed::errc::invalid_argument); ++v) {
        const std::error_code ec = qed::make_error_code(static_cast<qed::errc>(v));
        BOOST_TEST(&ec.category() == &qed::category());
        BOOST_TEST(static_cast<bool>(ec));
        const std::string m = ec.message();
        BOOST_TEST_CONTEXT("errc " << v) {
            BOOST_TEST(!m.empty());
            BOOST_TEST(m != "unknown qed error");
            BOOST_TEST(seen.insert(m).second, "message is unique: " << m);
        }
    }
    // Implicit conversion from the enum, comparison both ways.
    std::error_code ec = qed::errc::bad_magic;
    BOOST_TEST((ec == qed::errc::bad_magic));
    BOOST_TEST((ec != qed::errc::file_too_small));
    BOOST_TEST((ec != std::make_error_code(std::errc::invalid_argument)));
}

// ---- layout (src/format/layout.hpp): pure placement rules -----------------

// Where a new backing name goes: inside the first block when it fits there,
// else whole blocks clear of the old name, or nowhere.
BOOST_AUTO_TEST_CASE(backing_name_placement) {
    using qed::detail::place_backing_name;
    qed::header none;
    const std::uint64_t area = 65536;  // one 64 KiB header cluster
    for (const std::size_t block : {std::size_t{512}, std::size_t{4096}}) {
        BOOST_TEST(place_backing_name(none, 10, block, area) == qed::header_struct_size);
        BOOST_TEST(place_backing_name(none, block - qed::header_struct_size, block, area) == qed::header_struct_size);
        // One byte too many for the first block: the end of the header area.
        const std::size_t longer = block - qed::header_struct_size + 1;
        const std::uint64_t len = (longer + block - 1) / block * block;
        BOOST_TEST(place_backing_name(none, longer, block, area) == area - len);
        // The old name sits at the end of the area: right after it is past
        // the area, so the second block.
        qed::header had;
        had.features = qed::feature_backing_file;
        had.backing_filename_offset = static_cast<std::uint32_t>(area - len);
        had.backing_filename_size = static_cast<std::uint32_t>(longer);
        BOOST_TEST(place_backing_name(had, longer, block, area) == block);
        // Too long for the area, or no place clear of the old name.
        BOOST_TEST(place_backing_name(none, area, block, area) == 0u);
        qed::header big;
        big.features = qed::feature_backing_file;
        big.backing_filename_offset = static_cast<std::uint32_t>(block);
        big.backing_filename_size = static_cast<std::uint32_t>(area - block);
        BOOST_TEST(place_backing_name(big, block, block, area) == 0u);
    }
}

// How many L1 entries an image looks up: whole write blocks, at least one,
// never more than the table.
BOOST_AUTO_TEST_CASE(l1_entries_for_sizes) {
    qed::header h;
    h.cluster_size = 65536;
    h.table_size = 4;
    h.l1_table_offset = 65536;
    const qed::geometry g(h);  // 32768 entries, 2 GiB per L2 table
    using qed::detail::l1_entries_for;
    BOOST_TEST(l1_entries_for(g, 0, 512) == 64u);
    BOOST_TEST(l1_entries_for(g, 1, 512) == 64u);
    BOOST_TEST(l1_entries_for(g, 64 * g.l2_span(), 512) == 64u);
    BOOST_TEST(l1_entries_for(g, 64 * g.l2_span() + 1, 512) == 128u);
    BOOST_TEST(l1_entries_for(g, 1, 4096) == 512u);
    BOOST_TEST(l1_entries_for(g, qed::max_image_size(h.cluster_size, h.table_size), 4096) == g.table_entries);
}

// The first block: the header over what it held, the name after it only
// where the header puts it there; little-endian entries either way.
BOOST_AUTO_TEST_CASE(first_block_and_entries) {
    std::vector<std::byte> block(512, std::byte{0x77});
    qed::header h;
    h.features = qed::feature_backing_file;
    h.backing_filename_offset = qed::header_struct_size;
    h.backing_filename_size = 4;
    qed::detail::encode_first_block(block, h, "base");
    BOOST_TEST(std::memcmp(block.data() + qed::header_struct_size, "base", 4) == 0);
    BOOST_TEST((block[qed::header_struct_size + 4] == std::byte{0x77}));  // the rest as it was
    const auto decoded = qed::decode(std::span<const std::byte, qed::header_struct_size>(block.data(), 64));
    BOOST_TEST((decoded == h));
    h.backing_filename_offset = 4096;  // elsewhere: the block keeps its bytes
    std::vector<std::byte> other(512, std::byte{0x77});
    qed::detail::encode_first_block(other, h, "base");
    BOOST_TEST((other[qed::header_struct_size] == std::byte{0x77}));

    const std::uint64_t in[2] = {0x0102030405060708ull, 1};
    std::uint64_t out[2];
    qed::detail::convert_entries(in, out, 2);
    const auto* b = reinterpret_cast<const unsigned char*>(out);
    BOOST_TEST(b[0] == 0x08);  // little-endian on disk, whatever the host
    BOOST_TEST(b[8] == 0x01);
    BOOST_TEST(qed::detail::bytes_in_backing(0, 100, 50) == 50u);
    BOOST_TEST(qed::detail::bytes_in_backing(60, 100, 50) == 0u);
    BOOST_TEST(qed::detail::bytes_in_backing(10, 20, 50) == 20u);
}

BOOST_AUTO_TEST_SUITE_END()
