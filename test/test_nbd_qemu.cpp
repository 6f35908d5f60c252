// SPDX-License-Identifier: BSL-1.0
// qed-nbd with QEMU's NBD client: qemu-img convert/compare/map and qemu-io
// over nbd://127.0.0.1:PORT, several clients at once, a client killed in
// the middle of a transfer; afterwards QEMU's own QED driver checks and
// reads the image file.
#include <sys/stat.h>

#include "test_nbd_support.hpp"

using namespace nbdtest;

namespace {

bool have_qemu(boost::unit_test::test_unit_id) {
    return have("qemu-img") && have("qemu-io");
}

constexpr std::uint64_t mib = 1 << 20;

/// A raw file of `size` bytes: random MiBs with zero MiBs between them.
std::string mixed_data(std::size_t size, std::uint32_t seed) {
    std::string s = random_bytes(size, seed);
    for (std::size_t off = mib; off < size; off += 3 * mib)
        std::fill_n(s.begin() + off, std::min(mib, size - off), '\0');
    return s;
}

/// qemu-io -f raw on the export, with one -c per command.
std::vector<std::string> qemu_io(const std::string& uri, const std::vector<std::string>& cmds, bool read_only = false) {
    std::vector<std::string> argv{"qemu-io", "-f", "raw"};
    if (read_only) argv.push_back("-r");
    for (const auto& c : cmds) argv.insert(argv.end(), {"-c", c});
    argv.push_back(uri);
    return argv;
}

void check_io_output(const run_result& r) {
    BOOST_CHECK_MESSAGE(r.out.find("Pattern verification failed") == std::string::npos, r.out);
    BOOST_CHECK_MESSAGE(r.err.empty(), r.err);
}

/// After the server stopped: QEMU finds the image clean, NEED_CHECK clear.
void qemu_check_clean(const temp_dir& dir, const std::string& image) {
    NBD_RUN_OK(dir.path(), {"qemu-img", "check", "-f", "qed", image});
    BOOST_CHECK_EQUAL(qed_features(image) & 0x02, 0u);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(nbd_qemu, *boost::unit_test::precondition(have_qemu))

BOOST_AUTO_TEST_CASE(qemu_img_convert_and_compare) {
    temp_dir dir("qemu-convert");
    const std::string image = dir / "disk.qed";
    const std::string src = dir / "src.raw";
    const std::string back = dir / "back.raw";
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", image, "64M"});
    write_file(src, mixed_data(24 * mib, 1));

    server srv(dir);
    srv.start({"-f", "qed", "-t"}, image);
    NBD_RUN_OK(dir.path(), {"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, srv.uri()});
    const auto cmp = NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "raw", "-F", "raw", src, srv.uri()});
    BOOST_CHECK(cmp.out.find("Images are identical") != std::string::npos);
    NBD_RUN_OK(dir.path(), {"qemu-img", "convert", "-f", "raw", "-O", "raw", srv.uri(), back});
    // And a difference is noticed: write one byte elsewhere, compare again.
    NBD_RUN_OK(dir.path(), qemu_io(srv.uri(), {"write -P 0x42 60M 512"}));
    const auto diff = run({"qemu-img", "compare", "-f", "raw", "-F", "raw", src, srv.uri()}, dir.path());
    BOOST_CHECK_EQUAL(diff.status, 1);
    NBD_RUN_OK(dir.path(), qemu_io(srv.uri(), {"write -z 60M 512"}));
    BOOST_CHECK_EQUAL(srv.stop(), 0);

    const std::string got = read_file(back);
    BOOST_REQUIRE_EQUAL(got.size(), 64 * mib);
    BOOST_CHECK(got.compare(0, 24 * mib, read_file(src)) == 0);
    BOOST_CHECK(got.find_first_not_of('\0', 24 * mib) == std::string::npos);
    qemu_check_clean(dir, image);
    // QEMU's own QED driver reads what came in over NBD.
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "raw", "-F", "qed", back, image});
}

BOOST_AUTO_TEST_CASE(qemu_io_patterns_zeros_and_fua) {
    temp_dir dir("qemu-io");
    const std::string image = dir / "disk.qed";
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", image, "64M"});
    server srv(dir);
    srv.start({"-t"}, image);
    const std::vector<std::string> writes{
        "write -P 0xa5 0 1M",        "write -P 0x5a 3M 512",
        "write -P 0x11 5000 100",  // unaligned: QEMU's client does read-modify-write
        "write -z -u 8M 2M",       // zero clusters
        "write -P 0xee 10M 64k",
        "write -z 10M 4k",            // NO_HOLE: real zeros in an allocated cluster
        "write -f -P 0x77 12M 64k",   // FUA
        "aio_write -P 0x31 16M 64k",  // several in flight
        "aio_write -P 0x32 17M 64k", "aio_write -P 0x33 18M 64k", "aio_flush", "flush",
    };
    auto w = NBD_RUN_OK(dir.path(), qemu_io(srv.uri(), writes));
    check_io_output(w);
    const std::vector<std::string> reads{
        "read -P 0xa5 0 4096",   "read -P 0xa5 1044480 4096", "read -P 0x5a 3M 512",  "read -P 0x11 5000 100",
        "read -P 0xa5 4900 100", "read -P 0 8M 2M",           "read -P 0 10M 4k",     "read -P 0xee 10489856 60k",
        "read -P 0x77 12M 64k",  "read -P 0x31 16M 64k",      "read -P 0x32 17M 64k", "read -P 0x33 18M 64k",
        "read -P 0 20M 1M",
    };
    check_io_output(NBD_RUN_OK(dir.path(), qemu_io(srv.uri(), reads, true)));
    // Block status through QEMU's client: the zero clusters read as zeros
    // without data.
    const auto map = NBD_RUN_OK(dir.path(), {"qemu-img", "map", "-f", "raw", "--output=json", "--start-offset=8M",
                                             "--max-length=2M", srv.uri()});
    BOOST_CHECK_MESSAGE(map.out.find("\"start\": 8388608, \"length\": 2097152, \"depth\": 0, \"present\": true, "
                                     "\"zero\": true, \"data\": false") != std::string::npos,
                        map.out);
    BOOST_CHECK_EQUAL(srv.stop(), 0);

    qemu_check_clean(dir, image);
    // The same data through QEMU's QED driver, straight from the file.
    std::vector<std::string> argv{"qemu-io", "-f", "qed", "-r"};
    for (const auto& c : reads) argv.insert(argv.end(), {"-c", c});
    argv.push_back(image);
    check_io_output(NBD_RUN_OK(dir.path(), argv));
    const auto qmap = NBD_RUN_OK(dir.path(), {"qemu-img", "map", "-f", "qed", "--output=json", image});
    BOOST_CHECK_MESSAGE(qmap.out.find("\"start\": 8388608, \"length\": 2097152, \"depth\": 0, \"present\": true, "
                                      "\"zero\": true, \"data\": false") != std::string::npos,
                        qmap.out);
}

// --discard=unmap: TRIM is advertised, and a client's discard gives whole
// clusters' space back (du shrinks), they read as zeros, qemu-img check is
// clean. Without the option (qemu-nbd's default, ignore) TRIM isn't offered.
BOOST_AUTO_TEST_CASE(trim_with_discard_unmap) {
    temp_dir dir("trim");
    const std::string image = dir / "disk.qed";
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", image, "64M"});
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "write -P 0x6b 0 32M", image});
    const auto du = [&] {
        struct stat st {};
        BOOST_REQUIRE(::stat(image.c_str(), &st) == 0);
        return static_cast<std::uint64_t>(st.st_blocks) * 512;
    };
    const std::uint64_t before = du();
    {
        server srv(dir);
        srv.start({"-t"}, image);
        if (have("nbdinfo")) {
            // nbdinfo --can: exit 0 when the export can, 2 when it can't.
            const auto r = nbdtest::run({"nbdinfo", "--can", "trim", srv.uri()}, dir.path());
            BOOST_CHECK_MESSAGE(r.status == 2, "TRIM offered without --discard=unmap: " << r.status << " " << r.err);
        }
        // QEMU's client doesn't send TRIM to an export without it: nothing changes.
        NBD_RUN_OK(dir.path(), qemu_io(srv.uri(), {"discard 0 1M"}));
        BOOST_CHECK_EQUAL(srv.stop(), 0);
        check_io_output(NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-r", "-c", "read -P 0x6b 0 1M", image}));
    }
    server srv(dir);
    srv.start({"-t", "--discard=unmap"}, image);
    if (have("nbdinfo")) NBD_RUN_OK(dir.path(), {"nbdinfo", "--can", "trim", srv.uri()});
    // 1M+4k..25M-4k: clusters from 1M+64k to 25M-64k are whole.
    check_io_output(NBD_RUN_OK(dir.path(), qemu_io(srv.uri(), {"discard 1052672 25157632", "flush"})));
    const std::vector<std::string> reads{"read -P 0x6b 0 1M", "read -P 0x6b 1M 64k", "read -P 0 1088k 25034752",
                                         "read -P 0x6b 26148864 64k", "read -P 0x6b 25M 7M"};
    check_io_output(NBD_RUN_OK(dir.path(), qemu_io(srv.uri(), reads, true)));
    const auto map = NBD_RUN_OK(dir.path(), {"qemu-img", "map", "-f", "raw", "--output=json", srv.uri()});
    BOOST_CHECK_MESSAGE(map.out.find("\"start\": 1114112, \"length\": 25034752, \"depth\": 0, \"present\": true, "
                                     "\"zero\": true, \"data\": false") != std::string::npos,
                        map.out);
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    const std::uint64_t after = du();
    BOOST_TEST_MESSAGE("du: " << before << " -> " << after << " bytes");
    BOOST_CHECK_MESSAGE(after + 22 * 1024 * 1024 <= before, "du " << before << " -> " << after);
    qemu_check_clean(dir, image);
    std::vector<std::string> argv{"qemu-io", "-f", "qed", "-r"};
    for (const auto& c : reads) argv.insert(argv.end(), {"-c", c});
    argv.push_back(image);
    check_io_output(NBD_RUN_OK(dir.path(), argv));
}

BOOST_AUTO_TEST_CASE(several_clients_at_once) {
    temp_dir dir("qemu-many");
    const std::string image = dir / "disk.qed";
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", image, "64M"});
    server srv(dir);
    srv.start({"-t", "-e", "4", "--cache=none"}, image);  // O_DIRECT too
    // Four qemu-io processes at once, each writing then verifying its own
    // 8 MiB with many requests in flight.
    std::vector<std::unique_ptr<child>> clients;
    for (int i = 0; i < 4; ++i) {
        std::vector<std::string> cmds;
        const std::string pat = std::to_string(0x40 + i);
        for (int k = 0; k < 32; ++k)
            cmds.push_back("aio_write -P " + pat + " " + std::to_string((i * 8 + k / 4) * mib + (k % 4) * 256 * 1024) +
                           " 256k");
        cmds.push_back("aio_flush");
        cmds.push_back("read -P " + pat + " " + std::to_string(i * 8) + "M 8M");
        clients.push_back(std::make_unique<child>(qemu_io(srv.uri(), cmds), dir / ("c" + std::to_string(i) + ".out"),
                                                  dir / ("c" + std::to_string(i) + ".err")));
    }
    for (int i = 0; i < 4; ++i) {
        const auto st = clients[static_cast<std::size_t>(i)]->wait_for(60s);
        BOOST_REQUIRE_MESSAGE(st, "qemu-io " << i << " hung");
        BOOST_CHECK_MESSAGE(*st == 0, "qemu-io " << i << ": " << read_file(dir / ("c" + std::to_string(i) + ".err")));
        const std::string out = read_file(dir / ("c" + std::to_string(i) + ".out"));
        BOOST_CHECK(out.find("Pattern verification failed") == std::string::npos);
    }
    // Every client's data, seen by a fifth.
    check_io_output(NBD_RUN_OK(
        dir.path(),
        qemu_io(srv.uri(), {"read -P 0x40 0 8M", "read -P 0x41 8M 8M", "read -P 0x42 16M 8M", "read -P 0x43 24M 8M"},
                true)));
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    qemu_check_clean(dir, image);
}

BOOST_AUTO_TEST_CASE(client_killed_mid_transfer) {
    temp_dir dir("qemu-kill");
    const std::string image = dir / "disk.qed";
    const std::string src = dir / "src.raw";
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", image, "256M"});
    write_file(src, random_bytes(192 * mib, 5));
    server srv(dir);
    srv.start({"-t", "-e", "2"}, image);
    int killed = 0;
    for (int round = 0; round < 3; ++round) {
        child convert({"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, srv.uri()}, dir / "convert.out",
                      dir / "convert.err");
        std::this_thread::sleep_for(std::chrono::milliseconds(100 + 50 * round));
        if (!convert.poll()) ++killed;
        convert.kill_hard();
        // The server serves the next client as if nothing happened.
        check_io_output(NBD_RUN_OK(
            dir.path(), qemu_io(srv.uri(), {"write -P 0x66 100M 1M", "read -P 0x66 100M 1M", "read -P 0 230M 1M"})));
    }
    BOOST_TEST_MESSAGE(killed << " of 3 transfers killed while running");
    BOOST_CHECK_GT(killed, 0);
    // What the killed clients had written is consistent: QEMU's check is
    // clean and a full copy still works.
    NBD_RUN_OK(dir.path(), {"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, srv.uri()});
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "raw", "-F", "raw", src, srv.uri()});
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    qemu_check_clean(dir, image);
}

BOOST_AUTO_TEST_CASE(raw_image_and_read_only) {
    temp_dir dir("qemu-raw");
    const std::string file = dir / "disk.raw";
    write_file(file, mixed_data(8 * mib, 3));
    server srv(dir);
    srv.start({"-f", "raw", "-r", "-t", "--cache=none", "--aio=threads"}, file);
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "raw", "-F", "raw", file, srv.uri()});
    const auto w = run(qemu_io(srv.uri(), {"write -P 1 0 512"}), dir.path());
    BOOST_CHECK_NE(w.status, 0);  // a read-only export refuses writers
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    // Read-write raw: a qemu-img convert into it.
    const std::string src = dir / "src.raw";
    write_file(src, mixed_data(8 * mib, 4));
    srv.start({"-f", "raw"}, file);  // no -t: exits after the client leaves
    NBD_RUN_OK(dir.path(), {"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, srv.uri()});
    BOOST_CHECK_EQUAL(srv.wait(10s), 0);
    BOOST_CHECK(read_file(file) == read_file(src));
}

BOOST_AUTO_TEST_CASE(backing_files_stay_in_the_allowed_directory) {
    temp_dir dir("qemu-backing");
    fs::create_directories(dir.path() / "base");
    fs::create_directories(dir.path() / "img");
    const std::string base = dir / "base/base.raw";
    const std::string overlay = dir / "img/overlay.qed";
    write_file(base, std::string(4 * mib, '\x5b'));
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", "-b", "../base/base.raw", "-F", "raw", overlay});
    server srv(dir);
    // Default: only the image's own directory.
    auto [st, err] = srv.start_failing({}, overlay);
    BOOST_CHECK_EQUAL(st, 1);
    BOOST_CHECK_MESSAGE(err.find("allowed directory") != std::string::npos, err);
    srv.start({"-t", "--allow-backing-dir", dir.path().string()}, overlay);
    check_io_output(NBD_RUN_OK(dir.path(), qemu_io(srv.uri(), {"read -P 0x5b 0 4M", "write -P 0x10 1M 64k",
                                                               "read -P 0x10 1M 64k", "read -P 0x5b 2M 1M"})));
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    BOOST_CHECK(read_file(base) == std::string(4 * mib, '\x5b'));  // the backing file is untouched
    NBD_RUN_OK(dir.path(), {"qemu-img", "check", "-f", "qed", overlay});
}

BOOST_AUTO_TEST_CASE(qemu_nbd_options_snapshot_detect_zeroes_list_and_refusals) {
    temp_dir dir("qemu-options");
    const std::string image = dir / "disk.qed";
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", image, "16M"});
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "write -P 0x61 0 2M", image});
    const std::string before = read_file(image);

    // -s: writes go to a temporary overlay; the image is untouched and the
    // overlay (under $TMPDIR) is gone afterwards.
    const std::string tmp = dir / "tmp";
    fs::create_directories(tmp);
    ::setenv("TMPDIR", tmp.c_str(), 1);
    {
        server srv(dir);
        srv.start({"-s", "-A"}, image);
        BOOST_CHECK(!fs::is_empty(tmp));
        const auto r = NBD_RUN_OK(dir.path(), qemu_io(srv.uri(), {"write -P 0x62 1M 64k", "read -P 0x62 1M 64k",
                                                                  "read -P 0x61 0 1M", "read -P 0x61 1984k 64k"}));
        check_io_output(r);
        BOOST_CHECK_EQUAL(srv.wait(), 0);  // left after its one client
    }
    ::unsetenv("TMPDIR");
    BOOST_CHECK(fs::is_empty(tmp));
    BOOST_CHECK_MESSAGE(read_file(image) == before, "-s changed the image");

    // --detect-zeroes=on: a write of zeros becomes zero clusters, as with qemu-nbd.
    {
        server srv(dir);
        srv.start({"-t", "--detect-zeroes=on"}, image);
        NBD_RUN_OK(dir.path(), qemu_io(srv.uri(), {"write -P 0 0 1M", "write -P 0x63 1M 64k", "write -P 0 4M 1M"}));
        // -L lists the exports as qemu-nbd -L does, byte for byte.
        const std::vector<std::string> where{"-b", "127.0.0.1", "-p", std::to_string(srv.port())};
        std::vector<std::string> ours{server_binary(), "-L"};
        std::vector<std::string> theirs{"qemu-nbd", "-L"};
        ours.insert(ours.end(), where.begin(), where.end());
        theirs.insert(theirs.end(), where.begin(), where.end());
        const auto a = NBD_RUN_OK(dir.path(), ours);
        const auto b = NBD_RUN_OK(dir.path(), theirs);
        BOOST_CHECK_EQUAL(a.out, b.out);
        BOOST_CHECK(a.out.find("exports available: 1") != std::string::npos);
        BOOST_CHECK_EQUAL(srv.stop(), 0);
    }
    const auto map = NBD_RUN_OK(dir.path(), {"qemu-img", "map", "-f", "qed", "--output=json", image});
    // Zeros where nothing was allocated: a zero cluster, not data.
    BOOST_CHECK_MESSAGE(
        map.out.find(R"("start": 4194304, "length": 1048576, "depth": 0, "present": true, "zero": true, )"
                     R"("data": false})") != std::string::npos,
        map.out);
    qemu_check_clean(dir, image);
    check_io_output(NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "read -P 0 0 1M", "-c", "read -P 0x63 1M 64k",
                                            "-c", "read -P 0 4M 1M", image}));

    // Refused with a clear message.
    server srv(dir);
    const std::vector<std::pair<std::vector<std::string>, std::string>> refused = {
        {{"-c", "/dev/nbd0"}, "attach it with nbd-client"},
        {{"-d", "/dev/nbd0"}, "nbd-client -d /dev/nbd0"},
        {{"--detect-zeroes=unmap"}, "--detect-zeroes=unmap is not allowed without --discard=unmap"},
        {{"--detect-zeroes=maybe"}, "invalid --detect-zeroes mode 'maybe'"},
    };
    for (const auto& [args, message] : refused) {
        const auto [status, err] = srv.start_failing(args, image);
        BOOST_CHECK_EQUAL(status, 1);
        BOOST_CHECK_MESSAGE(err.find(message) != std::string::npos, err);
    }
    const auto l = run({server_binary(), "-L", "-b", "127.0.0.1", "-p", std::to_string(free_port())}, dir.path());
    BOOST_CHECK_EQUAL(l.status, 1);
    BOOST_CHECK_MESSAGE(l.err.find("cannot connect to 127.0.0.1:") != std::string::npos, l.err);
}

BOOST_AUTO_TEST_SUITE_END()
