// SPDX-License-Identifier: BSL-1.0
// Bad arguments and bad images: qed-img and qed-io must answer with one
// readable line naming the file and the problem, a non-zero exit status,
// no crash, no hang, and the image exactly as it was.
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <map>

#include "qed/version.hpp"
#include "test_tools_support.hpp"

namespace data = boost::unit_test::data;
using namespace qed::tools_test;

namespace {

/// Images to misuse, all made by qed-img itself.
void make_images(const scratch& s) {
    auto must = [&s](std::vector<std::string> args) {
        const result r = s.img(args);
        BOOST_REQUIRE_MESSAGE(r.status == 0, r);
    };
    must({"create", "-q", "-f", "qed", "good.qed", "4M"});
    const result w = s.io({"-c", "write -P 1 0 128k", "good.qed"});
    BOOST_REQUIRE_MESSAGE(w.status == 0, w);
    must({"create", "-q", "-f", "raw", "disk.raw", "1M"});
    must({"create", "-q", "-f", "qed", "-u", "-b", "gone.qed", "-F", "qed", "orphan.qed", "4M"});
    must({"create", "-q", "-f", "qed", "small.qed", "1M"});
    // Damaged headers.
    s.copy("good.qed", "badmagic.qed");
    s.poke("badmagic.qed", 0, "QEF");
    s.copy("good.qed", "cluster.qed");
    s.poke("cluster.qed", 4, std::string("\x00\x30\x00\x00", 4));  // 12 KiB: not a power of two
    s.copy("good.qed", "features.qed");
    s.poke("features.qed", 16, le64(0x8));  // unknown feature bit
    s.copy("good.qed", "short.qed");
    s.resize("short.qed", 10);
    s.copy("good.qed", "l1.qed");
    s.poke("l1.qed", 40, le64(0x100000000ULL));  // L1 table far past the end
    // A table entry pointing past the end of the file.
    s.copy("good.qed", "corrupt.qed");
    s.poke("corrupt.qed", 0x10000, le64(0x40000000ULL));
}

struct bad_run {
    std::string tool;  ///< "img" or "io"
    std::vector<std::string> args;
    std::string names;  ///< text the error line must contain ("" = none)
    int status = 1;
    std::vector<std::string> untouched = {"good.qed"};
};
std::ostream& operator<<(std::ostream& os, const bad_run& b) {
    os << (b.tool == "img" ? "qed-img" : "qed-io");
    for (const auto& a : b.args) os << ' ' << a;
    return os;
}

const std::vector<bad_run> bad_runs = {
    // qed-img: the command line.
    {"img", {}, ""},
    {"img", {"frobnicate", "good.qed"}, "frobnicate"},
    {"img", {"info", "--bogus", "good.qed"}, "bogus"},
    {"img", {"info", "-f", "vmdk", "good.qed"}, "vmdk"},
    {"img", {"info", "--output=xml", "good.qed"}, "xml"},
    {"img", {"info"}, "info"},
    {"img", {"info", "good.qed", "extra"}, "extra"},
    {"img", {"check", "-r", "most", "good.qed"}, "most"},
    {"img", {"map", "--start-offset=lots", "good.qed"}, "lots"},
    {"img", {"create", "-f", "qed", "new.qed", "12Q"}, "12Q"},
    {"img", {"create", "-f", "qed", "-o", "cluster_size=3k", "new.qed", "1M"}, "new.qed"},
    {"img", {"create", "-f", "qed", "-b", "good.qed", "new.qed"}, "new.qed"},
    {"img", {"create", "-f", "qed", "-b", "gone.qed", "-F", "qed", "new.qed"}, "gone.qed"},
    {"img", {"convert", "-O", "vmdk", "good.qed", "new.img"}, "vmdk"},
    {"img", {"convert", "-O", "qed", "gone.qed", "new.qed"}, "gone.qed"},
    {"img", {"convert", "-O", "qed", "good.qed", "good.qed"}, "good.qed"},
    {"img", {"convert", "-n", "-O", "qed", "good.qed", "small.qed"}, "small.qed", 1, {"good.qed", "small.qed"}},
    {"img", {"convert", "-c", "-O", "qed", "good.qed", "new.qed"}, "compression"},
    {"img", {"commit", "good.qed"}, "good.qed"},
    {"img", {"commit", "orphan.qed"}, "gone.qed", 1, {"orphan.qed"}},
    {"img", {"rebase", "-b", "gone.qed", "-F", "qed", "good.qed"}, "gone.qed"},
    {"img", {"rebase", "-b", "disk.raw", "good.qed"}, "good.qed"},
    {"img", {"rebase", "-b", "good.qed", "-F", "qed", "good.qed"}, "good.qed"},
    {"img", {"rebase", "good.qed"}, "good.qed"},
    {"img", {"resize", "good.qed", "1M"}, "shrink"},
    {"img", {"resize", "good.qed", "-1M"}, "shrink"},
    {"img", {"resize", "good.qed", "+100"}, "512"},
    {"img", {"resize", "good.qed", "1E"}, "good.qed"},
    {"img", {"resize", "good.qed", "big"}, "big"},
    {"img", {"compare", "good.qed", "gone.qed"}, "gone.qed", 2},
    {"img", {"compare", "-f", "zip", "good.qed", "good.qed"}, "zip", 2},
    // qed-img: bad images.
    {"img", {"info", "missing.qed"}, "missing.qed"},
    {"img", {"info", "-f", "qed", "disk.raw"}, "disk.raw", 1, {"disk.raw"}},
    {"img", {"info", "badmagic.qed"}, "", 1, {"badmagic.qed"}},  // probes as raw: not an error
    {"img", {"info", "-f", "qed", "badmagic.qed"}, "badmagic.qed", 1, {"badmagic.qed"}},
    {"img", {"info", "cluster.qed"}, "cluster.qed", 1, {"cluster.qed"}},
    {"img", {"info", "features.qed"}, "features.qed", 1, {"features.qed"}},
    {"img", {"info", "-f", "qed", "short.qed"}, "short.qed", 1, {"short.qed"}},
    {"img", {"info", "l1.qed"}, "l1.qed", 1, {"l1.qed"}},
    {"img", {"map", "orphan.qed"}, "gone.qed", 1, {"orphan.qed"}},
    {"img", {"check", "features.qed"}, "features.qed", 1, {"features.qed"}},
    {"img", {"check", "disk.raw"}, "disk.raw", 63, {"disk.raw"}},
    {"img", {"map", "corrupt.qed"}, "corrupt.qed", 1, {"corrupt.qed"}},
    {"img", {"convert", "-O", "qed", "corrupt.qed", "new.qed"}, "corrupt.qed", 1, {"corrupt.qed"}},
    // qed-io.
    {"io", {"-c", "read 0 512", "missing.qed"}, "missing.qed"},
    {"io", {"-f", "qcow2", "good.qed"}, "qcow2"},
    {"io", {"--frob", "good.qed"}, "frob"},
    {"io", {"-f", "qed", "-c", "read 0 512", "disk.raw"}, "disk.raw", 1, {"disk.raw"}},
    {"io", {"-c", "read 0 512", "features.qed"}, "features.qed", 1, {"features.qed"}},
    {"io", {"-c", "read 0 512", "orphan.qed"}, "gone.qed", 1, {"orphan.qed"}},
    {"io", {"-r", "-c", "write 0 512", "good.qed"}, "good.qed"},
    {"io", {"-r", "-c", "truncate 8M", "good.qed"}, "good.qed"},
    {"io", {"-c", "truncate 1M", "good.qed"}, "shrink"},
    {"io", {"-c", "truncate 4M+1", "good.qed"}, ""},  // parse error: printed on stdout as qemu-io does
    {"io", {"-c", "frobnicate", "good.qed"}, "frobnicate"},
    {"io", {"-r", "-c", "read -P 1 0 64k", "-c", "read 0 64k", "corrupt.qed"}, "", 1, {"corrupt.qed"}},
    // json: names, --image-opts and --object.
    {"img", {"info", "json:{\"driver\": \"qed\", \"file\": {\"driver\": \"blkdebug\"}}"}, "blkdebug"},
    {"img", {"info", "json:{\"driver\": \"qed\""}, "json:"},
    {"img", {"info", "json:{'driver': 'qed', 'file': {'filename': 'gone.qed'}}"}, "gone.qed"},
    {"img", {"info", "--image-opts", "-f", "qed", "driver=qed,file.filename=good.qed"}, "mutually exclusive"},
    {"img", {"info", "--image-opts", "driver=qed,file.filename=good.qed,frob=1"}, "frob", 1, {"good.qed"}},
    {"img", {"info", "--image-opts", "driver"}, "driver"},
    {"img", {"info", "--object", "frobber,id=x", "good.qed"}, "frobber"},
    {"img", {"info", "--object", "secret,data=x", "good.qed"}, "id"},
    {"io", {"--image-opts", "-c", "read 0 512", "driver=null-co,size=big"}, "null-co"},
    {"img",
     {"info",
      "json:{'driver': 'qed', 'file': {'driver': 'blkdebug', 'inject-error': [{'errno': 5}], "
      "'image': {'filename': 'good.qed'}}}"},
     "inject-error.0",
     1,
     {"good.qed"}},
    {"io", {"-c", "open -o driver=qed,file.driver=quorum,file.filename=good.qed"}, "quorum", 1, {"good.qed"}},
    {"io", {"--object", "iothread,id=x", "-c", "read 0 512", "good.qed"}, "iothread", 1, {"good.qed"}},
};

}  // namespace

BOOST_AUTO_TEST_SUITE(tools_errors)

BOOST_DATA_TEST_CASE(one_line_non_zero_and_the_image_untouched, data::make(bad_runs), b) {
    scratch s;
    make_images(s);
    std::map<std::string, std::string> before;
    for (const auto& f : b.untouched) before[f] = s.read_file(f);

    const result r = b.tool == "img" ? s.img(b.args) : s.io(b.args);
    BOOST_CHECK_MESSAGE(r.exited && !r.timed_out, "crashed or hung: " << r);
    if (b.names.empty() && b.args.size() > 1 && b.args[0] == "info") {
        // badmagic.qed without -f is a raw image: info works.
        BOOST_CHECK_EQUAL(r.status, 0);
    } else {
        BOOST_CHECK_MESSAGE(r.status == b.status, "exit status " << r.status << ", expected " << b.status << ": " << r);
    }
    if (!b.names.empty()) {
        BOOST_CHECK_MESSAGE(r.err_lines().size() == 1, "expected exactly one line on stderr: " << r);
        BOOST_CHECK_MESSAGE(r.err.find(b.names) != std::string::npos,
                            "the error does not name " << b.names << ": " << r);
        BOOST_CHECK_MESSAGE(
            r.err.rfind(b.tool == "img" ? "qed-img: " : "qed-io: ", 0) == 0 || r.err.find(b.names) != std::string::npos,
            r);
    }
    for (const auto& [f, bytes] : before) BOOST_CHECK_MESSAGE(s.read_file(f) == bytes, f << " was modified");
    // Nothing half-written left behind.
    BOOST_CHECK(!s.exists("new.qed"));
    BOOST_CHECK(!s.exists("new.img"));
}

BOOST_AUTO_TEST_CASE(a_read_past_a_corrupt_entry_fails_cleanly) {
    scratch s;
    make_images(s);
    const std::string before = s.read_file("corrupt.qed");
    const result r = s.io({"-r", "-c", "read 0 64k", "corrupt.qed"});
    BOOST_CHECK(r.exited && !r.timed_out);
    BOOST_CHECK_EQUAL(r.status, 1);
    BOOST_CHECK(r.out.find("read failed: ") != std::string::npos);
    BOOST_CHECK(s.read_file("corrupt.qed") == before);
}

BOOST_AUTO_TEST_CASE(help_and_version) {
    scratch s;
    for (const auto& args : std::vector<std::vector<std::string>>{{"--help"}, {"-V"}, {"info", "--help"}}) {
        const result r = s.img(args);
        BOOST_CHECK_EQUAL(r.status, 0);
        BOOST_CHECK(!r.out.empty());
    }
    const result h = s.io({"-c", "help"});
    BOOST_CHECK_EQUAL(h.status, 0);
    BOOST_CHECK(h.out.find("aio_write") != std::string::npos);
    // "bench" belongs to another issue; until then it is an unknown command.
    BOOST_CHECK_EQUAL(s.img({"bench", "x"}).status, 1);
}

// The version comes from project(VERSION) through qed/version.hpp, in the
// shape of qemu-img's and qemu-io's first line.
BOOST_AUTO_TEST_CASE(version_is_the_library_version) {
    scratch s;
    for (const auto& opt : {"-V", "--version"}) {
        const result img = s.img({opt});
        BOOST_CHECK_EQUAL(img.status, 0);
        BOOST_CHECK_EQUAL(img.out.substr(0, img.out.find('\n')), "qed-img version " QED_VERSION);
        const result io = s.io({opt});
        BOOST_CHECK_EQUAL(io.status, 0);
        BOOST_CHECK_EQUAL(io.out.substr(0, io.out.find('\n')), "qed-io version " QED_VERSION);
    }
}

BOOST_AUTO_TEST_SUITE_END()
