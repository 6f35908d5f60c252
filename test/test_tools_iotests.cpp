// SPDX-License-Identifier: BSL-1.0
// Behaviours QEMU's own iotests check, asserted here so they hold without
// running the iotests: commit -b through the backing chain, the "file:"
// prefix, qemu's messages that scripts match, and qed-io's commands.
#include <boost/test/unit_test.hpp>

#include "test_tools_support.hpp"

using namespace qed::tools_test;

namespace {

void must(const result& r) {
    BOOST_REQUIRE_MESSAGE(r.exited && r.status == 0, r);
}

/// base <- mid <- top in sub/, each holding one 64 KiB pattern of its own.
void make_chain(const scratch& s) {
    fs::create_directories(s.path("sub"));
    must(s.img({"create", "-q", "-f", "qed", "sub/t.base", "1M"}));
    must(s.img({"create", "-q", "-f", "qed", "-b", "t.base", "-F", "qed", "sub/t.mid"}));
    must(s.img({"create", "-q", "-f", "qed", "-b", "t.mid", "-F", "qed", "sub/t"}));
    must(s.io({"-c", "write -P 0x11 0 64k", "sub/t.base"}));
    must(s.io({"-c", "write -P 0x22 64k 64k", "sub/t.mid"}));
    must(s.io({"-c", "write -P 0x33 128k 64k", "sub/t"}));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(commit_base)

BOOST_AUTO_TEST_CASE(a_relative_base_is_looked_up_in_the_chain_not_the_working_directory) {
    scratch s;
    make_chain(s);
    // "t.mid" is the name stored in sub/t; there is no ./t.mid.
    const result r = s.img({"commit", "-b", "t.mid", "sub/t"});
    must(r);
    BOOST_TEST(r.out == "Image committed.\n");
    must(s.io({"-c", "read -P 0x33 128k 64k", "-c", "read -P 0x22 64k 64k", "-f", "qed", "sub/t.mid"}));
    // -b implies -d: the top image keeps its data.
    must(s.io({"-c", "read -P 0x33 128k 64k", "sub/t"}));
    const result a = s.img({"map", "--output=json", "sub/t"});
    BOOST_TEST(a.out.find("\"depth\": 0") != std::string::npos, a);
}

BOOST_AUTO_TEST_CASE(a_base_two_levels_down_receives_both_levels_above_it) {
    scratch s;
    make_chain(s);
    must(s.img({"commit", "-b", "t.base", "sub/t"}));
    must(s.io({"-c", "read -P 0x11 0 64k", "-c", "read -P 0x22 64k 64k", "-c", "read -P 0x33 128k 64k", "-c",
               "read -P 0 192k 64k", "sub/t.base"}));
    must(s.img({"check", "-q", "sub/t.base"}));
    // The images above keep what they had.
    must(s.io({"-c", "read -P 0x22 64k 64k", "sub/t.mid"}));
    must(s.io({"-c", "read -P 0x33 128k 64k", "sub/t"}));
}

BOOST_AUTO_TEST_CASE(an_absolute_base_matches_by_file) {
    scratch s;
    make_chain(s);
    must(s.img({"commit", "-b", s.path("sub/t.mid"), "sub/t"}));
    must(s.io({"-c", "read -P 0x33 128k 64k", "sub/t.mid"}));
}

BOOST_AUTO_TEST_CASE(a_name_outside_the_chain_is_refused_with_qemus_line) {
    scratch s;
    make_chain(s);
    const std::string before = s.read_file("sub/t.mid");
    // Relative to sub/, "sub/t.mid" names sub/sub/t.mid: not in the chain.
    const result r = s.img({"commit", "-b", "sub/t.mid", "sub/t"});
    BOOST_TEST(r.status == 1);
    BOOST_TEST(r.err == "qed-img: Did not find 'sub/t.mid' in the backing chain of 'sub/t'\n");
    BOOST_TEST((s.read_file("sub/t.mid") == before));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(file_protocol)

BOOST_AUTO_TEST_CASE(the_file_prefix_names_the_local_file) {
    scratch s;
    const result c = s.img({"create", "-f", "qed", "file:" + s.path("a:b.qed"), "1M"});
    must(c);
    BOOST_TEST(s.exists("a:b.qed"));
    BOOST_TEST(!s.exists("file:" + s.path("a:b.qed")));
    must(s.img({"create", "-q", "-f", "qed", "base.qed", "1M"}));
    must(s.img({"create", "-q", "-f", "qed", "-b", "base.qed", "-F", "qed", "file:image:top.qed"}));
    BOOST_TEST(s.exists("image:top.qed"));
    const result i = s.img({"info", "file:image:top.qed"});
    must(i);
    BOOST_TEST(i.out.find("image: ./image:top.qed\n") != std::string::npos, i);
    BOOST_TEST(i.out.find("backing file: base.qed (actual path: ./base.qed)\n") != std::string::npos, i);
    must(s.io({"-c", "write -P 7 0 4k", "file:image:top.qed"}));
    must(s.io({"-c", "read -P 7 0 4k", "image:top.qed"}));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(qemu_messages)

BOOST_AUTO_TEST_CASE(read_v_shows_only_letters_and_digits) {
    scratch s;
    must(s.img({"create", "-q", "-f", "qed", "t.qed", "1M"}));
    must(s.io({"-c", "write -P 0x2a 0 8", "-c", "write -P 0x41 8 8", "t.qed"}));
    const result r = s.io({"-c", "read -v 0 16", "t.qed"});
    must(r);
    BOOST_TEST(r.out.rfind("00000000:  2a 2a 2a 2a 2a 2a 2a 2a 41 41 41 41 41 41 41 41  ........AAAAAAAA\n", 0) == 0,
               r);
}

BOOST_AUTO_TEST_CASE(a_missing_backing_file_is_reported_as_qemu_io_does) {
    scratch s;
    must(s.img({"create", "-q", "-f", "qed", "t.base", "1M"}));
    must(s.img({"create", "-q", "-f", "qed", "-b", s.path("t.base"), "-F", "qed", "t.qed"}));
    fs::remove(s.path("t.base"));
    const result r = s.io({"-c", "quit", "t.qed"});
    BOOST_TEST(r.status == 1);
    BOOST_TEST(r.err == "qed-io: can't open device t.qed: Could not open backing file: Could not open '" +
                            s.path("t.base") + "': No such file or directory\n");
}

BOOST_AUTO_TEST_CASE(create_without_F_and_a_missing_backing_file) {
    scratch s;
    const result r = s.img({"create", "-f", "qed", "-b", s.path("t.inexistent"), "t.qed"});
    BOOST_TEST(r.status == 1);
    BOOST_TEST(r.err == "qed-img: t.qed: Could not open '" + s.path("t.inexistent") +
                            "': No such file or directory\nCould not open backing image.\n");
    BOOST_TEST(!s.exists("t.qed"));
}

BOOST_AUTO_TEST_CASE(corrupt_headers_are_refused_in_qemus_words) {
    scratch s;
    must(s.img({"create", "-q", "-f", "qed", "good.qed", "128M"}));
    struct damage {
        std::uint64_t offset;
        std::string bytes;
        std::string line;
    };
    const std::vector<damage> cases = {
        {0, "QEDX", "Image not in QED format"},
        {4, std::string(4, '\xff'), "QED cluster size is invalid"},
        {8, std::string(4, '\xff'), "QED table size is invalid"},
        {12, std::string(4, '\xff'), "QED table offset is invalid"},
        {40, std::string(8, '\xff'), "QED table offset is invalid"},
        {48, std::string(8, '\xff'), "QED image size is invalid"},
    };
    for (const auto& c : cases) {
        s.copy("good.qed", "t.qed");
        s.poke("t.qed", c.offset, c.bytes);
        const result r = s.io({"-f", "qed", "-c", "read 0 512", "t.qed"});
        BOOST_TEST(r.status == 1);
        BOOST_TEST(r.err == "qed-io: can't open device t.qed: " + c.line + "\n");
    }
    s.copy("good.qed", "t.qed");
    s.resize("t.qed", 512);  // the header cluster cut short
    BOOST_TEST(s.io({"-f", "qed", "-c", "read 0 512", "t.qed"}).err ==
               "qed-io: can't open device t.qed: QED table offset is invalid\n");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(qemu_mismatches)

BOOST_AUTO_TEST_CASE(resize_shrinks_a_raw_file_with_shrink_only) {
    scratch s;
    must(s.img({"create", "-q", "-f", "raw", "d.raw", "1M"}));
    must(s.io({"-f", "raw", "-c", "write -P 9 0 512k", "-c", "write -P 8 512k 512k", "d.raw"}));
    const result refused = s.img({"resize", "-f", "raw", "d.raw", "512k"});
    BOOST_TEST(refused.status == 1);
    BOOST_TEST(refused.err.find("qed-img: Use the --shrink option to perform a shrink operation.\n") !=
               std::string::npos);
    BOOST_TEST(fs::file_size(s.path("d.raw")) == 1048576u);
    const result r = s.img({"resize", "-f", "raw", "--shrink", "d.raw", "512k"});
    must(r);
    BOOST_TEST(r.out == "Image resized.\n");
    BOOST_TEST(fs::file_size(s.path("d.raw")) == 524288u);
    must(s.io({"-f", "raw", "-c", "read -P 9 0 512k", "d.raw"}));
    // QED images still only grow.
    must(s.img({"create", "-q", "-f", "qed", "t.qed", "1M"}));
    BOOST_TEST(s.img({"resize", "--shrink", "t.qed", "512k"}).status == 1);
}

BOOST_AUTO_TEST_CASE(a_probed_raw_image_warns_and_keeps_block_0_raw) {
    scratch s;
    must(s.img({"create", "-q", "-f", "raw", "d.raw", "1M"}));
    // Byte by byte, "QED\0" would make the file probe as a QED image.
    const result r = s.io({"-c", "write -P 0x51 0 1", "-c", "write -P 0x45 1 1", "-c", "write -P 0x44 2 1", "d.raw"});
    BOOST_TEST(r.status == 1);
    BOOST_TEST(
        r.err.rfind("qed-io: warning: Image format was not specified for 'd.raw' and probing guessed raw.\n", 0) == 0,
        r);
    BOOST_TEST(r.out.find("write failed: Operation not permitted\n") != std::string::npos, r);
    BOOST_TEST(s.read_file("d.raw").substr(0, 4) == std::string("QE\0\0", 4));
    BOOST_TEST(s.img({"info", "d.raw"}).out.find("file format: raw") != std::string::npos);
    // Elsewhere, or with -f raw, nothing is restricted and nothing warns.
    must(s.io({"-c", "write -P 0x44 512 1", "d.raw"}));
    const result f = s.io({"-f", "raw", "-c", "write -P 0x44 2 1", "d.raw"});
    must(f);
    BOOST_TEST(f.err.empty());
}

BOOST_AUTO_TEST_CASE(read_C_copies_what_the_backing_file_supplies) {
    scratch s;
    must(s.img({"create", "-q", "-f", "qed", "b.qed", "1M"}));
    must(s.io({"-c", "write -P 5 0 256k", "b.qed"}));
    must(s.img({"create", "-q", "-f", "qed", "-b", "b.qed", "-F", "qed", "t.qed"}));
    must(s.io({"-c", "write -P 6 64k 64k", "t.qed"}));
    must(s.io({"-c", "read -C -P 5 0 64k", "-c", "read -C 64k 128k", "t.qed"}));
    // Backing file gone: what was read with -C is now the image's own.
    fs::remove(s.path("b.qed"));
    must(s.img({"rebase", "-u", "-b", "", "t.qed"}));
    must(s.io({"-c", "read -P 5 0 64k", "-c", "read -P 6 64k 64k", "-c", "read -P 5 128k 64k", "-c",
               "read -P 0 192k 64k", "t.qed"}));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(qed_io_open_close)

BOOST_AUTO_TEST_CASE(close_waits_for_requests_in_flight) {
    scratch s;
    must(s.img({"create", "-q", "-f", "qed", "t.qed", "8M"}));
    const result r = s.io({"-c", "aio_write -P 3 0 4M", "-c", "close", "t.qed"});
    must(r);
    BOOST_TEST(r.out.rfind("wrote 4194304/4194304 bytes at offset 0\n", 0) == 0, r);
    must(s.img({"check", "-q", "t.qed"}));
    must(s.io({"-c", "read -P 3 0 4M", "t.qed"}));
    // After close, commands that need an image say so.
    const result after = s.io({"-c", "close", "-c", "read 0 512", "t.qed"});
    BOOST_TEST(after.status == 1);
    BOOST_TEST(after.err == "qed-io: no file open, try 'help open'\n");
}

BOOST_AUTO_TEST_CASE(open_from_standard_input_with_a_path_or_options) {
    scratch s;
    must(s.img({"create", "-q", "-f", "qed", "t.qed", "1M"}));
    must(s.io({}, "open t.qed\nwrite -P 4 0 4k\nclose\nopen -r -o driver=qed,filename=t.qed\nread -P 4 0 4k\n"));
    const result twice = s.io({"-c", "open t.qed", "t.qed"});
    BOOST_TEST(twice.status == 1);
    BOOST_TEST(twice.err == "qed-io: file open already, try 'help close'\n");
    const result ro = s.io({}, "open -r t.qed\nwrite 0 512\n");
    BOOST_TEST(ro.status == 1);
    BOOST_TEST(s.io({"-c", "open -o driver=qed,file.align=4k,filename=t.qed"}).status == 1);
}

BOOST_AUTO_TEST_CASE(protocol_drivers_check_the_kind_of_file) {
    scratch s;
    fs::create_directories(s.path("dir"));
    const std::string dir = s.path("dir");
    BOOST_TEST(s.io({"-c", "open -r -o driver=file,filename=" + dir}).err ==
               "qed-io: can't open: 'file' driver requires '" + dir + "' to be a regular file\n");
    BOOST_TEST(s.io({"-c", "open -o driver=file,filename=" + dir}).err ==
               "qed-io: can't open: Could not open '" + dir + "': Is a directory\n");
    BOOST_TEST(s.io({"-c", "open -r -o driver=host_device,filename=" + dir}).err ==
               "qed-io: can't open: 'host_device' driver requires '" + dir +
                   "' to be either a character or block device\n");
    BOOST_TEST(s.io({"-c", "open -r -o driver=file,filename=/dev/null,locking=off"}).err ==
               "qed-io: can't open: 'file' driver requires '/dev/null' to be a regular file\n");
    must(s.io({"-c", "open -r -o driver=host_device,filename=/dev/null,locking=off"}));
    must(s.img({"create", "-q", "-f", "raw", "d.raw", "64k"}));
    must(s.io({"-c", "open -o driver=file,filename=d.raw", "-c", "write -P 1 0 512"}));
    BOOST_TEST(s.read_file("d.raw").substr(0, 2) == "\x01\x01");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(special_files)

BOOST_AUTO_TEST_CASE(a_character_device_opens_read_write_and_closes_cleanly) {
    // fdatasync on /dev/null fails with EINVAL: nothing to synchronize.
    scratch s;
    const result r = s.io({"-c", "open -o driver=host_device,filename=/dev/null,locking=off", "-c", "flush"});
    must(r);
    BOOST_TEST(r.err.empty(), r);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(qed_io_snapshot)

BOOST_AUTO_TEST_CASE(writes_in_snapshot_mode_leave_the_image_and_no_file_behind) {
    scratch s;
    fs::create_directories(s.path("tmp"));
    must(s.img({"create", "-q", "-f", "qed", "t.qed", "1M"}));
    must(s.io({"-c", "write -P 1 0 64k", "t.qed"}));
    must(s.img({"create", "-q", "-f", "raw", "d.raw", "1M"}));
    const std::string qed_before = s.read_file("t.qed");
    const std::string raw_before = s.read_file("d.raw");
    for (const std::string f : {"t.qed", "d.raw"}) {
        // the overlay reads through to the image and holds the writes
        const result r =
            s.io({"-s", "-c", "write -P 0xa 32k 64k", "-c", "read -P 0xa 32k 64k", "-c",
                  f == "t.qed" ? "read -P 1 0 32k" : "read -P 0 0 32k", "-f", f == "t.qed" ? "qed" : "raw", f});
        must(r);
    }
    BOOST_TEST((s.read_file("t.qed") == qed_before));
    BOOST_TEST((s.read_file("d.raw") == raw_before));
    must(s.io({"-c", "read -P 1 0 64k", "t.qed"}));
    // TMPDIR is where the overlay lives while qed-io runs; it is unlinked at once.
    const std::string tmpdir = s.path("tmp");
    ::setenv("TMPDIR", tmpdir.c_str(), 1);
    must(s.io({"-s", "-c", "write 0 4k", "t.qed"}));
    ::unsetenv("TMPDIR");
    BOOST_TEST(fs::is_empty(s.path("tmp")));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(qed_io_write_from_file)

BOOST_AUTO_TEST_CASE(write_s_fills_the_buffer_from_a_file_repeated) {
    scratch s;
    must(s.img({"create", "-q", "-f", "qed", "t.qed", "1M"}));
    { std::ofstream(s.path("pat"), std::ios::binary) << "abc"; }
    must(s.io({"-c", "write -s pat 100 8", "t.qed"}));
    must(s.img({"convert", "-O", "raw", "t.qed", "out.raw"}));
    BOOST_TEST(s.read_file("out.raw").substr(96, 16) == std::string("\0\0\0\0abcabcab\0\0\0\0", 16));
    const result missing = s.io({"-c", "write -s nope 0 8", "t.qed"});
    BOOST_TEST(missing.status == 1);
    BOOST_TEST(missing.out == "nope: No such file or directory\n");
    BOOST_TEST(s.io({"-c", "write -s pat -P 1 0 8", "t.qed"}).out ==
               "Only one of -z, -P, and -s can be specified at the same time\n");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(qed_img_dd)

BOOST_AUTO_TEST_CASE(dd_copies_with_bs_skip_and_count_as_qemu_img_does) {
    scratch s;
    must(s.img({"create", "-q", "-f", "qed", "in.qed", "1M"}));
    for (int i = 0; i < 16; ++i)
        must(s.io({"-c", "write -P " + std::to_string(i + 1) + " " + std::to_string(i * 65536) + " 64k", "in.qed"}));
    for (const std::string bs : {"5", "512", "1999", "64K", "1M"}) {
        const result r = s.img({"dd", "if=in.qed", "of=out.qed", "bs=" + bs, "-O", "qed"});
        must(r);
        BOOST_TEST(r.out.empty());
        must(s.img({"compare", "-q", "in.qed", "out.qed"}));
        must(s.img({"check", "-q", "out.qed"}));
    }
    // count counts from the start of the input, as in qemu-img: 4 blocks, 2 skipped.
    must(s.img({"dd", "-f", "qed", "if=in.qed", "of=part.raw", "bs=64k", "skip=2", "count=4"}));
    BOOST_TEST(fs::file_size(s.path("part.raw")) == 131072u);
    must(s.io({"-f", "raw", "-c", "read -P 3 0 64k", "-c", "read -P 4 64k 64k", "part.raw"}));
    // Skipping past the end: an empty output, after saying so.
    const result past = s.img({"dd", "if=in.qed", "of=empty.raw", "bs=64k", "skip=20"});
    must(past);
    BOOST_TEST(past.err == "qed-img: in.qed: cannot skip to specified offset\n");
    BOOST_TEST(fs::file_size(s.path("empty.raw")) == 0u);
}

BOOST_AUTO_TEST_CASE(dd_refuses_bad_operands_with_one_line) {
    scratch s;
    must(s.img({"create", "-q", "-f", "qed", "in.qed", "1M"}));
    BOOST_TEST(s.img({"dd", "if=in.qed"}).err == "qed-img: Must specify both input and output files\n");
    BOOST_TEST(s.img({"dd", "if=in.qed", "of=x", "bogus"}).err == "qed-img: unrecognized operand bogus\n");
    BOOST_TEST(s.img({"dd", "if=in.qed", "of=x", "conv=notrunc"}).err ==
               "qed-img: unrecognized operand conv=notrunc\n");
    BOOST_TEST(s.img({"dd", "if=in.qed", "of=x", "bs=0"}).err == "qed-img: invalid number: '0'\n");
    const result odd = s.img({"dd", "if=in.qed", "of=x", "bs=5", "skip=1"});
    BOOST_TEST(odd.status == 1);
    BOOST_TEST(odd.err.find("multiples of 512") != std::string::npos);
    BOOST_TEST(!s.exists("x"));
}

BOOST_AUTO_TEST_SUITE_END()
