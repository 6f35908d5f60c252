// SPDX-License-Identifier: BSL-1.0
// qed-img measure. For raw output the figures, the text and the JSON are
// compared with qemu-img measure -O raw's. For QED output (which qemu-img
// refuses to measure) the figures are checked against what this project
// really produces: the size of the file convert writes from the same input
// (equal when the input's data holds no zero blocks, which convert would
// skip; never larger), of the file create writes for --size, and of a
// convert of an input whose every byte is data.
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "test_tools_support.hpp"

namespace data = boost::unit_test::data;
using namespace qed::tools_test;

namespace {

constexpr std::uint64_t MiB = 1u << 20;

struct figures {
    std::uint64_t required = 0, full = 0;
};

// Parse qed-img measure's human output: exactly qemu-img's two lines.
figures parse_human(const result& r) {
    BOOST_REQUIRE_MESSAGE(r.exited && r.status == 0, "measure failed: " << r);
    const auto lines = r.out_lines();
    BOOST_REQUIRE_EQUAL(lines.size(), 2u);
    const std::string req = "required size: ", full = "fully allocated size: ";
    BOOST_REQUIRE(lines[0].rfind(req, 0) == 0);
    BOOST_REQUIRE(lines[1].rfind(full, 0) == 0);
    return {std::stoull(lines[0].substr(req.size())), std::stoull(lines[1].substr(full.size()))};
}

std::uint64_t file_size(const scratch& s, const std::string& name) {
    return std::filesystem::file_size(s.path(name));
}

// A QED image (qemu's, 64 KiB clusters) with data in separate places, every
// written byte non-zero, a zero cluster and a partial last L2 table.
void make_qed_source(const scratch& s, const std::string& name) {
    s.must_qemu_img({"create", "-f", "qed", s.path(name), "70M"});
    s.must_qemu_io(s.path(name), {"write -P 0x11 0 64k", "write -P 0x22 1M 3M", "write -z 8M 1M",
                                  "write -P 0x33 40M 128k", "write -P 0x44 69M 1M"});
}

// A sparse raw file: data at 4 KiB-aligned places, holes between.
void make_raw_source(const scratch& s, const std::string& name) {
    s.must_qemu_img({"create", "-f", "raw", s.path(name), "33M"});
    s.must_qemu_io(s.path(name), {"write -P 0x55 0 4k", "write -P 0x66 5M 12k", "write -P 0x77 32M 1M"}, "raw");
}

}  // namespace

// The data cases are argument lists; failures name them in their messages.
BOOST_TEST_DONT_PRINT_LOG_VALUE(std::vector<std::string>)

BOOST_AUTO_TEST_SUITE(measure, *boost::unit_test::precondition(qemu_available()))

// ---- raw output: the same as qemu-img measure -O raw -----------------------------

const std::vector<std::vector<std::string>> raw_cases = {
    {"--size", "1G"}, {"--size", "1000"},  // rounded up to a sector
    {"--size", "0"},  {"--size", "1G", "-o", "preallocation=off"},
    {"src.qed"},      {"-f", "qed", "src.qed"},
    {"src.raw"},      {"top.qed"},  // over a backing file: the guest size either way
};

BOOST_DATA_TEST_CASE(raw_output_is_what_qemu_img_prints, data::make(raw_cases), c) {
    scratch s;
    make_qed_source(s, "src.qed");
    make_raw_source(s, "src.raw");
    s.must_qemu_img({"create", "-f", "qed", "-b", "src.raw", "-F", "raw", s.path("top.qed")});
    for (const std::string output : {"human", "json"}) {
        std::vector<std::string> args{"measure", "-O", "raw", "--output=" + output};
        args.insert(args.end(), c.begin(), c.end());
        const result theirs = s.qemu_img(args);
        const result ours = s.img(args);
        BOOST_REQUIRE_MESSAGE(theirs.status == 0, theirs);
        BOOST_CHECK_EQUAL(ours.status, 0);
        BOOST_CHECK_EQUAL(ours.out, theirs.out);
    }
    // Without -O the output format is raw, as in qemu-img.
    std::vector<std::string> args{"measure"};
    args.insert(args.end(), c.begin(), c.end());
    BOOST_CHECK_EQUAL(s.img(args).out, s.qemu_img(args).out);
}

BOOST_AUTO_TEST_CASE(argument_errors_as_qemu_img) {
    scratch s;
    make_raw_source(s, "src.raw");
    for (const auto& args : std::vector<std::vector<std::string>>{{"measure", "-O", "raw"},
                                                                  {"measure", "--size", "1G", "src.raw"},
                                                                  {"measure", "missing.raw"},
                                                                  {"measure", "--size", "12x"}}) {
        const result theirs = s.qemu_img(args);
        const result ours = s.img(args);
        BOOST_CHECK_EQUAL(theirs.status, 1);
        BOOST_CHECK_EQUAL(ours.status, 1);
        BOOST_CHECK(ours.out.empty());
        BOOST_CHECK_MESSAGE(ours.err_lines().size() == 1, ours);
    }
    const result both = s.img({"measure", "--size", "1G", "src.raw"});
    BOOST_CHECK_EQUAL(both.err, "qed-img: --size N cannot be used together with a filename.\n");
    const result neither = s.img({"measure", "-O", "qed"});
    BOOST_CHECK_EQUAL(neither.err, "qed-img: Either --size N or one filename must be specified.\n");
}

// ---- QED output: the sizes create and convert produce ------------------------------

struct geometry_case {
    std::vector<std::string> options;  // -o for measure, create and convert
    const char* name;
};
std::ostream& operator<<(std::ostream& os, const geometry_case& g) {
    return os << g.name;
}

const std::vector<geometry_case> geometries = {
    {{}, "default (64 KiB clusters, 4-cluster tables)"},
    {{"-o", "cluster_size=4096,table_size=1"}, "4 KiB clusters, 1-cluster tables"},
    {{"-o", "cluster_size=4096,table_size=16"}, "4 KiB clusters, 16-cluster tables"},
    {{"-o", "cluster_size=1M"}, "1 MiB clusters"},
};

std::vector<std::string> with(std::vector<std::string> head, const std::vector<std::string>& opts,
                              const std::vector<std::string>& tail) {
    head.insert(head.end(), opts.begin(), opts.end());
    head.insert(head.end(), tail.begin(), tail.end());
    return head;
}

BOOST_DATA_TEST_CASE(qed_required_is_what_convert_writes, data::make(geometries), g) {
    scratch s;
    make_qed_source(s, "src.qed");
    make_raw_source(s, "src.raw");
    s.must_qemu_img({"create", "-f", "qed", "-b", "src.raw", "-F", "raw", s.path("top.qed")});
    s.must_qemu_io(s.path("top.qed"), {"write -P 0x12 8M 64k"});
    for (const std::string src : {"src.qed", "src.raw", "top.qed"}) {
        BOOST_TEST_CONTEXT(src) {
            const figures f = parse_human(s.img(with({"measure", "-O", "qed"}, g.options, {src})));
            const result conv = s.img(with({"convert", "-O", "qed"}, g.options, {src, "out.qed"}));
            BOOST_REQUIRE_MESSAGE(conv.status == 0, conv);
            // Every written byte is non-zero: convert skips nothing measure counts.
            BOOST_CHECK_EQUAL(f.required, file_size(s, "out.qed"));
            BOOST_CHECK_GT(f.full, f.required);
            // The JSON carries the same figures.
            const result j = s.img(with({"measure", "-O", "qed", "--output=json"}, g.options, {src}));
            BOOST_CHECK_EQUAL(j.status, 0);
            BOOST_CHECK_EQUAL(j.out, "{\n    \"required\": " + std::to_string(f.required) +
                                         ",\n    \"fully-allocated\": " + std::to_string(f.full) + "\n}\n");
            std::filesystem::remove(s.path("out.qed"));
        }
    }
}

BOOST_DATA_TEST_CASE(qed_fully_allocated_is_what_a_full_copy_writes, data::make(geometries), g) {
    scratch s;
    // Guest sizes ending inside a cluster and inside an L2 table.
    for (const std::uint64_t size : {std::uint64_t{20 * MiB + 4608}, std::uint64_t{16 * MiB}}) {
        BOOST_TEST_CONTEXT("size " << size) {
            const std::string sz = std::to_string(size);
            s.must_qemu_img({"create", "-f", "raw", s.path("full.raw"), sz});
            s.must_qemu_io(s.path("full.raw"), {"write -P 0x5a 0 " + sz}, "raw");
            const figures by_size = parse_human(s.img(with({"measure", "-O", "qed", "--size", sz}, g.options, {})));
            const figures by_image = parse_human(s.img(with({"measure", "-O", "qed"}, g.options, {"full.raw"})));
            // A full input needs every cluster: required = fully allocated.
            BOOST_CHECK_EQUAL(by_image.required, by_image.full);
            BOOST_CHECK_EQUAL(by_image.full, by_size.full);
            const result conv = s.img(with({"convert", "-f", "raw", "-O", "qed"}, g.options, {"full.raw", "full.qed"}));
            BOOST_REQUIRE_MESSAGE(conv.status == 0, conv);
            BOOST_CHECK_EQUAL(by_size.full, file_size(s, "full.qed"));
            // --size: an empty image, what create writes.
            const result cr = s.img(with({"create", "-f", "qed"}, g.options, {"empty.qed", sz}));
            BOOST_REQUIRE_MESSAGE(cr.status == 0, cr);
            BOOST_CHECK_EQUAL(by_size.required, file_size(s, "empty.qed"));
            for (const auto* f : {"full.raw", "full.qed", "empty.qed"}) std::filesystem::remove(s.path(f));
        }
    }
}

BOOST_AUTO_TEST_CASE(qed_required_bounds_convert_when_data_holds_zeros) {
    scratch s;
    // Written as data, but mostly zeros: convert leaves the zero blocks out.
    s.must_qemu_img({"create", "-f", "qed", s.path("z.qed"), "8M"});
    s.must_qemu_io(s.path("z.qed"), {"write -P 0 0 4M", "write -P 0x21 1M 4k"});
    const figures f = parse_human(s.img({"measure", "-O", "qed", "z.qed"}));
    BOOST_REQUIRE_EQUAL(s.img({"convert", "-O", "qed", "z.qed", "out.qed"}).status, 0);
    BOOST_CHECK_LE(file_size(s, "out.qed"), f.required);
    // 64 data clusters and one L2 table after the header and L1 table.
    BOOST_CHECK_EQUAL(f.required, 5 * 65536u + 4 * 65536u + 64 * 65536u);
}

BOOST_AUTO_TEST_CASE(qed_errors_are_one_line) {
    scratch s;
    const std::vector<std::vector<std::string>> bad = {
        {"measure", "-O", "qcow2", "--size", "1G"},
        {"measure", "-O", "qed", "-o", "cluster_size=1000", "--size", "1G"},
        {"measure", "-O", "qed", "-o", "table_size=3", "--size", "1G"},
        {"measure", "-O", "qed", "-o", "backing_file=x", "--size", "1G"},
        {"measure", "-O", "qed", "-o", "cluster_size=4096,table_size=1", "--size", "2G"},  // past 1 GiB
        {"measure", "-O", "raw", "-o", "preallocation=full", "--size", "1G"},
    };
    for (const auto& args : bad) {
        const result r = s.img(args);
        BOOST_CHECK_MESSAGE(r.status == 1 && r.out.empty() && r.err_lines().size() == 1, r);
    }
    // 512 entries x 512 entries x 4 KiB: 1 GiB is the most such an image holds.
    const result ok = s.img({"measure", "-O", "qed", "-o", "cluster_size=4096,table_size=1", "--size", "1G"});
    BOOST_CHECK_EQUAL(ok.status, 0);
}

BOOST_AUTO_TEST_SUITE_END()
