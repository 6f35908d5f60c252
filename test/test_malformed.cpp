// SPDX-License-Identifier: BSL-1.0
// Malformed images: one case per way an image can be wrong.
//
// Images are crafted byte by byte (header, L1, L2 tables, data clusters at
// known offsets), then broken in one way each:
//   - header fields out of range or overflowing, unknown feature bits,
//     truncated files, bad backing names: open fails with the specific
//     error, and the log line names the problem;
//   - table entries that point where they must not (misaligned, into the
//     header or the L1 table, past the end of the file): a read-only open
//     works, reads of the damaged range fail cleanly with the specific
//     error, the rest reads fine, check counts the damage, repair clears
//     it, and a dirty image is repaired when opened read-write;
//   - clusters or tables referenced twice: the data stays readable, check
//     counts it, repair can't fix it, NEED_CHECK stays set, and a dirty
//     image refuses a read-write open with errc::corrupt_image.
#include <sys/resource.h>

#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <functional>

#include "qed/image.hpp"
#include "support/log_lines.hpp"
#include "support/memory_fs.hpp"
#include "support/model.hpp"
#include "support/qed_inspect.hpp"
#include "support/sync.hpp"

namespace bdata = boost::unit_test::data;
using namespace qed;
using namespace qed::test;

namespace {

constexpr std::uint32_t cs = 4096;
constexpr std::uint32_t ts = 2;
constexpr std::uint64_t table_bytes = std::uint64_t{cs} * ts;
constexpr std::uint64_t span = table_bytes / 8 * cs;  // guest bytes per L2 table: 4 MiB
constexpr std::uint64_t image_size = 4 * span;

// Header field offsets.
constexpr std::uint64_t f_magic = 0, f_cluster_size = 4, f_table_size = 8, f_header_size = 12, f_features = 16,
                        f_compat = 24, f_autoclear = 32, f_l1 = 40, f_image_size = 48, f_name_offset = 56,
                        f_name_size = 60;

/// A small valid image laid out by hand:
///   [header: header_clusters][L1][L2 a][data A][data B][L2 b][data C]
/// L1[0] = a: guest cluster 0 -> A, 1 -> B, 2 -> zero cluster.
/// L1[1] = b: guest cluster at `span` -> C.
struct crafted {
    std::uint32_t header_clusters;
    std::uint64_t l1, l2a, a, b, l2b, c, end;
    std::vector<std::uint8_t> bytes;

    explicit crafted(std::uint32_t hc = 1) : header_clusters(hc) {
        l1 = std::uint64_t{hc} * cs;
        l2a = l1 + table_bytes;
        a = l2a + table_bytes;
        b = a + cs;
        l2b = b + cs;
        c = l2b + table_bytes;
        end = c + cs;
        bytes.assign(end, 0);
        put_u32(bytes, f_magic, qed::magic);
        put_u32(bytes, f_cluster_size, cs);
        put_u32(bytes, f_table_size, ts);
        put_u32(bytes, f_header_size, hc);
        put_u64(bytes, f_l1, l1);
        put_u64(bytes, f_image_size, image_size);
        l1_entry(0, l2a);
        l1_entry(1, l2b);
        l2_entry(l2a, 0, a);
        l2_entry(l2a, 1, b);
        l2_entry(l2a, 2, zero_cluster_entry);
        l2_entry(l2b, 0, c);
        fill(a, 0);
        fill(b, cs);
        fill(c, span);
    }
    void l1_entry(std::uint32_t i, std::uint64_t v) { put_u64(bytes, l1 + 8ull * i, v); }
    void l2_entry(std::uint64_t table, std::uint32_t i, std::uint64_t v) { put_u64(bytes, table + 8ull * i, v); }
    void fill(std::uint64_t host, std::uint64_t guest) {
        for (std::uint64_t s = 0; s < cs / 512; ++s)
            fill_sector(&bytes[host + s * 512], tag_of(guest), guest / 512 + s);
    }
    static std::uint64_t tag_of(std::uint64_t guest) { return 10 + guest / cs; }
    void set_need_check() { put_u64(bytes, f_features, get_u64(bytes, f_features) | feature_need_check); }
    void set_backing(const std::string& name) {
        put_u64(bytes, f_features, get_u64(bytes, f_features) | feature_backing_file | feature_backing_format_no_probe);
        put_u32(bytes, f_name_offset, header_struct_size);
        put_u32(bytes, f_name_size, static_cast<std::uint32_t>(name.size()));
        std::copy(name.begin(), name.end(), bytes.begin() + header_struct_size);
    }
};

/// What guest cluster `guest` of a crafted image holds (zeros if not data).
std::vector<std::uint8_t> expected_cluster(std::uint64_t guest, bool data) {
    std::vector<std::uint8_t> out(cs, 0);
    if (data)
        for (std::uint64_t s = 0; s < cs / 512; ++s)
            fill_sector(&out[s * 512], crafted::tag_of(guest), guest / 512 + s);
    return out;
}

struct env {
    boost::asio::io_context ioc;
    memory_fs fs{ioc.get_executor()};
    log_lines log;

    void put(const std::string& name, const std::vector<std::uint8_t>& b) {
        auto st = std::make_shared<memory_storage>();
        st->write(0, {reinterpret_cast<const std::byte*>(b.data()), b.size()});
        fs.storage(name) = st;
    }
    std::vector<std::uint8_t> get(const std::string& name) { return bytes_of(*fs.storage(name)); }
    open_options options(bool read_only, bool repair = true) {
        open_options o;
        o.read_only = read_only;
        o.repair_on_open = repair;
        o.format = image_format::qed;
        o.opener = fs.opener();
        o.log = log.sink();
        return o;
    }
    std::pair<std::error_code, sync_image> open_image(bool read_only, bool repair = true) {
        log.clear();
        return open(ioc, "img.qed", options(read_only, repair));
    }
    bool logged(const std::string& word) const { return log.mentions(word); }
    std::string all_log() const { return log.all(); }
};

// ===========================================================================
// Header problems: a specific error and a log line naming it
// ===========================================================================

struct header_case {
    const char* name;
    std::function<void(crafted&)> mutate;
    std::error_code expected;
    const char* log_word;  // the log must mention this
};
std::ostream& operator<<(std::ostream& os, const header_case& c) {
    return os << c.name;
}

std::error_code E(errc e) {
    return make_error_code(e);
}

const header_case header_cases[] = {
    {"bad magic", [](crafted& c) { put_u32(c.bytes, f_magic, 0x00444552); }, E(errc::bad_magic), "magic"},
    {"empty file", [](crafted& c) { c.bytes.clear(); }, E(errc::file_too_small), "too small"},
    {"file cut inside the 64-byte header", [](crafted& c) { c.bytes.resize(40); }, E(errc::file_too_small),
     "too small"},
    {"file cut inside the header cluster", [](crafted& c) { c.bytes.resize(1000); }, E(errc::invalid_header_size),
     "header_size"},
    {"cluster_size 0", [](crafted& c) { put_u32(c.bytes, f_cluster_size, 0); }, E(errc::invalid_cluster_size),
     "cluster_size"},
    {"cluster_size not a power of two", [](crafted& c) { put_u32(c.bytes, f_cluster_size, 6144); },
     E(errc::invalid_cluster_size), "cluster_size"},
    {"cluster_size below 4 KiB", [](crafted& c) { put_u32(c.bytes, f_cluster_size, 2048); },
     E(errc::invalid_cluster_size), "cluster_size"},
    {"cluster_size above 64 MiB", [](crafted& c) { put_u32(c.bytes, f_cluster_size, 128u << 20); },
     E(errc::invalid_cluster_size), "cluster_size"},
    {"cluster_size 2^31", [](crafted& c) { put_u32(c.bytes, f_cluster_size, 1u << 31); }, E(errc::invalid_cluster_size),
     "cluster_size"},
    {"table_size 0", [](crafted& c) { put_u32(c.bytes, f_table_size, 0); }, E(errc::invalid_table_size), "table_size"},
    {"table_size 3", [](crafted& c) { put_u32(c.bytes, f_table_size, 3); }, E(errc::invalid_table_size), "table_size"},
    {"table_size 32", [](crafted& c) { put_u32(c.bytes, f_table_size, 32); }, E(errc::invalid_table_size),
     "table_size"},
    {"table_size 2^31", [](crafted& c) { put_u32(c.bytes, f_table_size, 1u << 31); }, E(errc::invalid_table_size),
     "table_size"},
    {"header_size 0", [](crafted& c) { put_u32(c.bytes, f_header_size, 0); }, E(errc::invalid_header_size),
     "header_size"},
    {"header_size 0xffffffff (overflows 32 bits in bytes)",
     [](crafted& c) { put_u32(c.bytes, f_header_size, 0xffffffffu); }, E(errc::invalid_header_size), "header_size"},
    {"header_size beyond the end of the file", [](crafted& c) { put_u32(c.bytes, f_header_size, 100); },
     E(errc::invalid_header_size), "header_size"},
    // The header area then covers the L1 table at 0x10000: qemu 7.2 tests
    // the L1 offset first and says so (checked with the real qemu-io).
    {"header_size * cluster_size above 4 GiB over the L1 table (QEMU: QED table offset is invalid)",
     [](crafted& c) { put_u32(c.bytes, f_header_size, (1u << 20) + 1); }, E(errc::invalid_header_size),
     "QED table offset is invalid"},
    {"image_size not a multiple of 512", [](crafted& c) { put_u64(c.bytes, f_image_size, image_size + 100); },
     E(errc::image_size_unaligned), "image_size"},
    {"image_size beyond what L1 can address", [](crafted& c) { put_u64(c.bytes, f_image_size, 8ull << 30); },
     E(errc::image_too_large), "exceeds"},
    {"image_size 2^63 (negative as a signed length)", [](crafted& c) { put_u64(c.bytes, f_image_size, 1ull << 63); },
     E(errc::image_too_large), "exceeds"},
    {"image_size 2^64 - 512", [](crafted& c) { put_u64(c.bytes, f_image_size, ~std::uint64_t{511}); },
     E(errc::image_too_large), "exceeds"},
    {"unknown incompatible feature bit 0x8", [](crafted& c) { put_u64(c.bytes, f_features, 0x8); },
     E(errc::unknown_features), "0x8"},
    {"unknown incompatible feature bit 2^63", [](crafted& c) { put_u64(c.bytes, f_features, 1ull << 63); },
     E(errc::unknown_features), "0x8000000000000000"},
    {"l1_table_offset misaligned", [](crafted& c) { put_u64(c.bytes, f_l1, c.l1 + 512); }, E(errc::invalid_l1_offset),
     "l1_table_offset"},
    {"l1_table_offset 0 (the header)", [](crafted& c) { put_u64(c.bytes, f_l1, 0); }, E(errc::invalid_l1_offset),
     "l1_table_offset"},
    {"l1_table_offset inside a 2-cluster header",
     [](crafted& c) {
         c = crafted(2);
         put_u64(c.bytes, f_l1, cs);
     },
     E(errc::invalid_l1_offset), "inside the header"},
    {"l1_table_offset past the end of the file", [](crafted& c) { put_u64(c.bytes, f_l1, 1ull << 40); },
     E(errc::l1_table_past_eof), "past the end"},
    {"l1_table_offset 2^64 - 4096 (offset + size overflows)",
     [](crafted& c) { put_u64(c.bytes, f_l1, ~std::uint64_t{cs - 1}); }, E(errc::l1_table_past_eof), "past the end"},
    {"L1 table runs past the end of the file", [](crafted& c) { put_u64(c.bytes, f_l1, c.c); },
     E(errc::l1_table_past_eof), "past the end"},
    {"file cut inside the L1 table", [](crafted& c) { c.bytes.resize(c.l1 + cs); }, E(errc::l1_table_past_eof),
     "past the end"},
    {"backing name beyond the header clusters",
     [](crafted& c) {
         c.set_backing("base.raw");
         put_u32(c.bytes, f_name_size, 5000);
     },
     E(errc::backing_name_out_of_range), "outside the header"},
    {"backing name offset + size overflow 32 bits",
     [](crafted& c) {
         c.set_backing("base.raw");
         put_u32(c.bytes, f_name_offset, 0xffffffffu);
         put_u32(c.bytes, f_name_size, 0xffffffffu);
     },
     E(errc::backing_name_out_of_range), "outside the header"},
    {"backing name length 0xFFFFFF00 (issue 15: two 4 GiB buffers)",
     [](crafted& c) {
         c.set_backing("base.raw");
         put_u32(c.bytes, f_name_size, 0xFFFFFF00u);
     },
     E(errc::backing_name_out_of_range), "outside the header"},
    {"backing name one byte over the limit, inside a large enough header",
     [](crafted& c) {
         c = crafted(260);  // 1040 KiB of header clusters
         c.set_backing("base.raw");
         put_u32(c.bytes, f_name_size, max_backing_name_size + 1);
     },
     E(errc::backing_name_too_long), "backing file name length"},
    {"backing flag with an empty name",
     [](crafted& c) {
         c.set_backing("base.raw");
         put_u32(c.bytes, f_name_size, 0);
     },
     E(errc::bad_backing_name), "empty"},
    {"backing name with a NUL byte", [](crafted& c) { c.set_backing(std::string("base\0raw", 8)); },
     E(errc::bad_backing_name), "NUL"},
    {"backing file missing", [](crafted& c) { c.set_backing("missing.raw"); },
     std::make_error_code(std::errc::no_such_file_or_directory), "missing.raw"},
    {"backing name is the image itself", [](crafted& c) { c.set_backing("img.qed"); }, E(errc::backing_loop),
     "refers back"},
    {"backing name is the image itself, spelled ./img.qed", [](crafted& c) { c.set_backing("./img.qed"); },
     E(errc::backing_loop), "refers back"},
    {"backing name is the image itself, with need_check set",
     [](crafted& c) {
         c.set_backing("img.qed");
         c.set_need_check();
     },
     E(errc::backing_loop), "refers back"},
};

}  // namespace

BOOST_AUTO_TEST_SUITE(malformed)

BOOST_AUTO_TEST_CASE(the_crafted_image_is_valid) {
    for (std::uint32_t hc : {1u, 2u}) {
        env e;
        crafted c(hc);
        e.put("img.qed", c.bytes);
        BOOST_CHECK(inspect_layout(c.bytes).clean());
        for (bool ro : {true, false}) {
            auto [ec, img] = e.open_image(ro);
            BOOST_REQUIRE_MESSAGE(!ec, ec.message() << e.all_log());
            std::vector<std::uint8_t> got(cs);
            for (std::uint64_t g : {std::uint64_t{0}, std::uint64_t{cs}, span}) {
                BOOST_REQUIRE(!img.read(g, got.data(), cs));
                BOOST_CHECK(got == expected_cluster(g, true));
            }
            BOOST_REQUIRE(!img.read(2 * cs, got.data(), cs));
            BOOST_CHECK(got == expected_cluster(2 * cs, false));
            auto [cec, r] = img.check();
            BOOST_REQUIRE(!cec);
            BOOST_CHECK_EQUAL(r.corruptions, 0u);
            BOOST_CHECK_EQUAL(r.leaks, 0u);
            BOOST_CHECK_EQUAL(r.allocated_clusters, 3u);
            BOOST_REQUIRE(!img.close());
        }
    }
}

BOOST_DATA_TEST_CASE(header_problem_gives_its_error, bdata::make(header_cases), hc) {
    for (bool ro : {true, false}) {
        env e;
        crafted c;
        hc.mutate(c);
        e.put("img.qed", c.bytes);
        auto [ec, img] = e.open_image(ro);
        BOOST_CHECK_MESSAGE(ec == hc.expected, hc.name << (ro ? " (read-only)" : " (read-write)") << ": got \""
                                                       << ec.message() << "\" expected \"" << hc.expected.message()
                                                       << "\"" << e.all_log());
        BOOST_CHECK_MESSAGE(e.logged(hc.log_word),
                            hc.name << ": the log does not mention \"" << hc.log_word << "\":" << e.all_log());
        BOOST_CHECK(!img.img.is_open());
        // Nothing was written to a file that failed to open.
        BOOST_CHECK(e.get("img.qed") == c.bytes);
    }
}

BOOST_AUTO_TEST_CASE(a_qcow2_image_is_named_when_probing) {
    env e;
    std::vector<std::uint8_t> b(4096, 0);
    b[0] = 'Q';
    b[1] = 'F';
    b[2] = 'I';
    b[3] = 0xfb;
    e.put("img.qed", b);
    open_options o = e.options(true);
    o.format.reset();
    auto [ec, img] = open(e.ioc, "img.qed", o);
    BOOST_CHECK(ec == errc::unknown_format);
    BOOST_CHECK_MESSAGE(e.logged("qcow2"), e.all_log());
}

BOOST_AUTO_TEST_CASE(image_size_zero_opens_and_refuses_io) {
    env e;
    crafted c;
    put_u64(c.bytes, f_image_size, 0);
    e.put("img.qed", c.bytes);
    auto [ec, img] = e.open_image(false);
    BOOST_REQUIRE_MESSAGE(!ec, ec.message() << e.all_log());
    BOOST_CHECK_EQUAL(img.img.size(), 0u);
    std::vector<std::uint8_t> buf(512);
    BOOST_CHECK(img.read(0, buf.data(), buf.size()) == errc::out_of_range);
    BOOST_CHECK(img.write(0, buf.data(), buf.size()) == errc::out_of_range);
    BOOST_CHECK(!img.read(0, buf.data(), 0));  // an empty request at the end is fine
    auto [cec, r] = img.check();
    BOOST_REQUIRE(!cec);
    BOOST_CHECK_EQUAL(r.total_clusters, 0u);
    BOOST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(unknown_compat_bits_are_ignored_and_kept) {
    env e;
    crafted c;
    put_u64(c.bytes, f_compat, 0x5);
    e.put("img.qed", c.bytes);
    {
        auto [ec, img] = e.open_image(true);
        BOOST_REQUIRE_MESSAGE(!ec, ec.message());
        BOOST_CHECK_EQUAL(img.img.info().compat_features, 0x5u);
        BOOST_REQUIRE(!img.close());
    }
    auto [ec, img] = e.open_image(false);
    BOOST_REQUIRE_MESSAGE(!ec, ec.message());
    // Writes (an allocation marks the image dirty: a header rewrite) keep the bits.
    std::vector<std::uint8_t> data(cs, 0x5a);
    BOOST_REQUIRE(!img.write(3 * cs, data.data(), data.size()));
    // The bytes after the header may belong to the unknown feature: the
    // backing name is not rewritten over them.
    BOOST_CHECK(img.change_backing_file("base.raw", image_format::raw) == errc::unsupported_compat_features);
    BOOST_REQUIRE(!img.close());
    BOOST_CHECK_EQUAL(get_u64(e.get("img.qed"), f_compat), 0x5u);
}

BOOST_AUTO_TEST_CASE(unknown_autoclear_bits_are_cleared_by_a_writer_only) {
    env e;
    crafted c;
    put_u64(c.bytes, f_autoclear, 0x30);
    e.put("img.qed", c.bytes);
    {
        auto [ec, img] = e.open_image(true);
        BOOST_REQUIRE_MESSAGE(!ec, ec.message());
        BOOST_REQUIRE(!img.close());
        BOOST_CHECK_EQUAL(get_u64(e.get("img.qed"), f_autoclear), 0x30u);  // read-only: untouched
    }
    auto [ec, img] = e.open_image(false);
    BOOST_REQUIRE_MESSAGE(!ec, ec.message());
    BOOST_CHECK_EQUAL(get_u64(e.get("img.qed"), f_autoclear), 0u);  // cleared on disk by the open itself
    BOOST_CHECK_EQUAL(img.img.info().autoclear_features, 0u);
    std::vector<std::uint8_t> got(cs);
    BOOST_REQUIRE(!img.read(0, got.data(), cs));
    BOOST_CHECK(got == expected_cluster(0, true));
    BOOST_REQUIRE(!img.close());
}

// ===========================================================================
// Table problems
// ===========================================================================

namespace {

struct table_case {
    const char* name;
    std::uint32_t header_clusters;
    std::function<void(crafted&)> corrupt;
    std::uint64_t bad_guest;                                     // guest cluster whose read is affected
    std::error_code read_error;                                  // {}: the read works (double references)
    bool fixable;                                                // repair clears it (the data there is lost)
    std::function<std::vector<std::uint8_t>()> double_ref_data;  // what a double reference reads
};
std::ostream& operator<<(std::ostream& os, const table_case& c) {
    return os << c.name;
}

const table_case table_cases[] = {
    // --- invalid L1 entries --------------------------------------------------
    {"L1 entry misaligned", 1, [](crafted& c) { c.l1_entry(1, c.l2b + 512); }, span, E(errc::invalid_l2_offset), true,
     nullptr},
    {"L1 entry inside the header", 2, [](crafted& c) { c.l1_entry(1, cs); }, span, E(errc::invalid_l2_offset), true,
     nullptr},
    {"L1 entry pointing at the L1 table", 1, [](crafted& c) { c.l1_entry(1, c.l1); }, span, E(errc::invalid_l2_offset),
     true, nullptr},
    {"L1 entry past the end of the file", 1, [](crafted& c) { c.l1_entry(1, 1ull << 30); }, span,
     E(errc::invalid_l2_offset), true, nullptr},
    {"L1 entry whose table runs past the end of the file", 1, [](crafted& c) { c.l1_entry(1, c.c); }, span,
     E(errc::invalid_l2_offset), true, nullptr},
    {"L1 entry 2^64 - 4096", 1, [](crafted& c) { c.l1_entry(1, ~std::uint64_t{cs - 1}); }, span,
     E(errc::invalid_l2_offset), true, nullptr},
    {"file cut inside an L2 table", 1, [](crafted& c) { c.bytes.resize(c.l2b + cs); }, span, E(errc::invalid_l2_offset),
     true, nullptr},
    // --- invalid L2 entries --------------------------------------------------
    {"L2 entry misaligned", 1, [](crafted& c) { c.l2_entry(c.l2b, 0, c.c + 512); }, span,
     E(errc::invalid_cluster_offset), true, nullptr},
    {"L2 entry with reserved low bits set", 1, [](crafted& c) { c.l2_entry(c.l2b, 0, c.c | 0x2); }, span,
     E(errc::invalid_cluster_offset), true, nullptr},
    {"L2 entry inside the header", 2, [](crafted& c) { c.l2_entry(c.l2b, 0, cs); }, span,
     E(errc::invalid_cluster_offset), true, nullptr},
    {"L2 entry pointing at the L1 table", 1, [](crafted& c) { c.l2_entry(c.l2b, 0, c.l1); }, span,
     E(errc::invalid_cluster_offset), true, nullptr},
    {"L2 entry past the end of the file", 1, [](crafted& c) { c.l2_entry(c.l2b, 0, 1ull << 30); }, span,
     E(errc::invalid_cluster_offset), true, nullptr},
    {"L2 entry 2^64 - 4096", 1, [](crafted& c) { c.l2_entry(c.l2b, 0, ~std::uint64_t{cs - 1}); }, span,
     E(errc::invalid_cluster_offset), true, nullptr},
    {"file cut inside a data cluster", 1, [](crafted& c) { c.bytes.resize(c.c + 2048); }, span,
     E(errc::invalid_cluster_offset), true, nullptr},
    // --- double references -----------------------------------------------------
    {"data cluster referenced twice",
     1,
     [](crafted& c) { c.l2_entry(c.l2b, 0, c.a); },
     span,
     {},
     false,
     [] { return expected_cluster(0, true); }},
    {"L2 table referenced twice",
     1,
     [](crafted& c) { c.l1_entry(1, c.l2a); },
     span,
     {},
     false,
     [] { return expected_cluster(0, true); }},
    {"data cluster inside an L2 table",
     1,
     [](crafted& c) { c.l2_entry(c.l2b, 0, c.l2a); },
     span,
     {},
     false,
     [] {
         crafted ref;
         return std::vector<std::uint8_t>(ref.bytes.begin() + static_cast<std::ptrdiff_t>(ref.l2a),
                                          ref.bytes.begin() + static_cast<std::ptrdiff_t>(ref.l2a + cs));
     }},
};

/// Which cluster of the file `got` is a copy of, for messages.
std::string what_is(const std::vector<std::uint8_t>& got, const crafted& c) {
    if (got == expected_cluster(0, false)) return "zeros";
    const std::pair<const char*, std::uint64_t> known[] = {{"the first cluster of the L1 table", c.l1},
                                                           {"the first cluster of L2 table a", c.l2a},
                                                           {"the first cluster of L2 table b", c.l2b},
                                                           {"data cluster A", c.a},
                                                           {"data cluster B", c.b},
                                                           {"data cluster C", c.c},
                                                           {"the header", 0}};
    for (const auto& [name, off] : known)
        if (off + cs <= c.bytes.size() &&
            std::equal(got.begin(), got.end(), c.bytes.begin() + static_cast<std::ptrdiff_t>(off)))
            return name;
    return "unknown bytes";
}

std::vector<std::uint8_t> read_cluster(sync_image& img, std::uint64_t guest, std::error_code& ec) {
    std::vector<std::uint8_t> got(cs);
    ec = img.read(guest, got.data(), cs);
    return got;
}

/// The undamaged guest clusters still read their data.
void check_good_ranges(sync_image& img, const table_case& tc) {
    for (std::uint64_t g : {std::uint64_t{0}, std::uint64_t{cs}, span}) {
        if (g == tc.bad_guest) continue;
        std::error_code ec;
        const auto got = read_cluster(img, g, ec);
        BOOST_REQUIRE_MESSAGE(!ec, tc.name << ": read of undamaged guest " << g << ": " << ec.message());
        BOOST_CHECK_MESSAGE(got == expected_cluster(g, true), tc.name << ": undamaged guest " << g << " changed");
    }
    std::error_code ec;
    const auto z = read_cluster(img, 2 * cs, ec);
    BOOST_CHECK(!ec && z == expected_cluster(0, false));
}

}  // namespace

BOOST_DATA_TEST_CASE(table_problem_is_contained, bdata::make(table_cases), tc) {
    crafted c(tc.header_clusters);
    tc.corrupt(c);
    const layout_report lr = inspect_layout(c.bytes);
    BOOST_REQUIRE_MESSAGE(!lr.clean(), "the crafted damage is not damage");

    // 1. Read-only open works; the damaged range fails cleanly (or, for a
    //    double reference, reads what the entry points at); the rest reads.
    {
        env e;
        e.put("img.qed", c.bytes);
        auto [ec, img] = e.open_image(true);
        BOOST_REQUIRE_MESSAGE(!ec, tc.name << ": read-only open: " << ec.message() << e.all_log());
        std::error_code rec;
        const auto got = read_cluster(img, tc.bad_guest, rec);
        if (tc.read_error) {
            if (rec != tc.read_error)
                BOOST_ERROR(tc.name << ": read of the damaged range gave \"" << rec.message() << "\", expected \""
                                    << tc.read_error.message() << "\""
                                    << (rec ? "" : "; the guest reads " + what_is(got, c)));
        } else {
            BOOST_CHECK_MESSAGE(!rec, tc.name << ": " << rec.message());
            if (tc.double_ref_data)
                BOOST_CHECK_MESSAGE(got == tc.double_ref_data(),
                                    tc.name << ": reads something else than what the entry points at");
        }
        check_good_ranges(img, tc);
        // 2. Check without repair counts it.
        auto [cec, r] = img.check();
        BOOST_REQUIRE(!cec);
        BOOST_CHECK_MESSAGE(r.corruptions >= 1, tc.name << ": check found " << r.corruptions << " corruptions");
        BOOST_CHECK(!r.messages.empty());
        BOOST_CHECK_EQUAL(r.corruptions_fixed, 0u);
        BOOST_REQUIRE(!img.close());
        BOOST_CHECK(e.get("img.qed") == c.bytes);  // read-only: untouched
    }

    // 3. A clean (not NEED_CHECK) image opens read-write; repair=all fixes
    //    invalid offsets, never double references.
    {
        env e;
        e.put("img.qed", c.bytes);
        auto [ec, img] = e.open_image(false);
        BOOST_REQUIRE_MESSAGE(!ec, tc.name << ": read-write open: " << ec.message() << e.all_log());
        if (tc.read_error) {
            // A write there fails the same way, and touches nothing.
            const std::vector<std::uint8_t> junk(cs, 0xee);
            const std::error_code wec = img.write(tc.bad_guest, junk.data(), junk.size());
            BOOST_CHECK_MESSAGE(wec == tc.read_error,
                                tc.name << ": write to the damaged range gave \"" << wec.message() << "\"");
            BOOST_CHECK_MESSAGE(
                e.get("img.qed") == c.bytes,
                tc.name << ": a write to the damaged range changed the file"
                        << (inspect_layout(e.get("img.qed")).header_ok ? "" : " (the header no longer validates)"));
        }
        auto [cec, r] = img.check(check_options::repair::all);
        BOOST_REQUIRE(!cec);
        if (tc.fixable) {
            BOOST_CHECK_MESSAGE(r.corruptions_fixed >= 1 && r.corruptions == 0,
                                tc.name << ": repair fixed " << r.corruptions_fixed << ", left " << r.corruptions);
            std::error_code rec;
            const auto got = read_cluster(img, tc.bad_guest, rec);
            BOOST_CHECK_MESSAGE(!rec, tc.name << ": after repair: " << rec.message());
            BOOST_CHECK_MESSAGE(got == expected_cluster(0, false), tc.name << ": after repair the range is not zeros");
        } else {
            BOOST_CHECK_MESSAGE(r.corruptions >= 1, tc.name << ": repair claims to have fixed a double reference");
        }
        check_good_ranges(img, tc);
        BOOST_REQUIRE(!img.close());
        const auto after = e.get("img.qed");
        if (tc.fixable) {
            const layout_report lr2 = inspect_layout(after);
            std::string problems;
            for (const auto& p : lr2.problems) problems += " | " + p;
            BOOST_CHECK_MESSAGE(lr2.clean(), tc.name << ": after repair:" << problems);
        }
        BOOST_CHECK(!header_of(after).has(feature_need_check));
    }

    // 4. The same image marked dirty: a read-write open repairs what it can;
    //    what it can't, it refuses, and NEED_CHECK stays.
    {
        env e;
        c.set_need_check();
        e.put("img.qed", c.bytes);
        auto [ec, img] = e.open_image(false);
        if (tc.fixable) {
            BOOST_REQUIRE_MESSAGE(!ec, tc.name << ": dirty read-write open: " << ec.message() << e.all_log());
            BOOST_CHECK_MESSAGE(e.logged("repaired"),
                                tc.name << ": the log does not say what was repaired" << e.all_log());
            std::error_code rec;
            const auto got = read_cluster(img, tc.bad_guest, rec);
            BOOST_CHECK(!rec && got == expected_cluster(0, false));
            check_good_ranges(img, tc);
            BOOST_REQUIRE(!img.close());
            BOOST_CHECK(!header_of(e.get("img.qed")).has(feature_need_check));
        } else {
            BOOST_CHECK_MESSAGE(ec == errc::corrupt_image,
                                tc.name << ": dirty read-write open gave \"" << ec.message() << "\"" << e.all_log());
            BOOST_CHECK_MESSAGE(e.logged("corruption"), e.all_log());
            // Without the automatic repair it opens; repair can't help; the bit stays.
            auto [ec2, img2] = e.open_image(false, false);
            BOOST_REQUIRE_MESSAGE(!ec2, ec2.message());
            auto [cec, r] = img2.check(check_options::repair::all);
            BOOST_REQUIRE(!cec);
            BOOST_CHECK(r.corruptions >= 1);
            BOOST_CHECK(!r.need_check_cleared);
            check_good_ranges(img2, tc);
            BOOST_REQUIRE(!img2.close());
            BOOST_CHECK(header_of(e.get("img.qed")).has(feature_need_check));
            // Read-only still works, for recovery.
            auto [ec3, img3] = e.open_image(true);
            BOOST_REQUIRE(!ec3);
            check_good_ranges(img3, tc);
            BOOST_REQUIRE(!img3.close());
        }
    }
}

// Issue 15, case 1: a 4 KiB file, extended sparsely to what its header
// claims (65,537 header clusters of 64 KiB, a backing name of 0xFFFFFF00
// bytes), made every tool allocate 8.39 GB. Now open refuses it before
// allocating anything the header sizes: the peak RSS of this process grows
// by less than 16 MiB (it would grow by 4 GiB per buffer).
BOOST_AUTO_TEST_CASE(a_header_claiming_4_GiB_allocates_nothing_it_claims) {
    struct case1 {
        std::uint32_t header_clusters, name_size;
        std::error_code expected;
        const char* word;
    };
    const case1 cases[] = {
        {65537, 0xFFFFFF00u, E(errc::invalid_header_size), "QED header size is too large"},
        {65535, 0xFFFE0000u, E(errc::backing_name_too_long), "exceeds the limit"},
    };
    for (const auto& k : cases) {
        constexpr std::uint32_t big = 65536;
        std::vector<std::uint8_t> b(4096, 'a');
        put_u32(b, f_magic, qed::magic);
        put_u32(b, f_cluster_size, big);
        put_u32(b, f_table_size, 4);
        put_u32(b, f_header_size, k.header_clusters);
        put_u64(b, f_features, feature_backing_file);
        put_u64(b, f_l1, std::uint64_t{k.header_clusters} * big);
        put_u64(b, f_image_size, 1ull << 30);
        put_u32(b, f_name_offset, header_struct_size);
        put_u32(b, f_name_size, k.name_size);
        env e;
        e.put("img.qed", b);
        e.fs.storage("img.qed")->resize((std::uint64_t{k.header_clusters} + 8) * big);  // sparse
        rusage before{};
        ::getrusage(RUSAGE_SELF, &before);
        for (bool read_only : {true, false}) {
            auto [ec, img] = e.open_image(read_only);
            BOOST_CHECK_MESSAGE(ec == k.expected, k.header_clusters << ": " << ec.message() << e.all_log());
            BOOST_CHECK_MESSAGE(e.logged(k.word), e.all_log());
        }
        rusage after{};
        ::getrusage(RUSAGE_SELF, &after);
        BOOST_CHECK_LT(after.ru_maxrss - before.ru_maxrss, 16 * 1024);       // KiB
        BOOST_CHECK_LE(e.fs.storage("img.qed")->memory_used(), 64u * 1024);  // nothing written
    }
}

BOOST_AUTO_TEST_CASE(cases_counted) {
    BOOST_TEST_MESSAGE("malformed images: " << std::size(header_cases) << " header cases, " << std::size(table_cases)
                                            << " table cases, 4 special cases");
}

BOOST_AUTO_TEST_SUITE_END()
