// SPDX-License-Identifier: BSL-1.0
// qed-nbd serving several images at once (--export, --dir), with real
// clients: nbdinfo --list shows every export; qemu-io and qemu-img write
// and read the image of the export they name and no other; a readonly=on
// export refuses writes; an unknown name is refused (a client error and one
// server log line with the client's address and the name); --dir serves
// the QED images of a directory; nonsense command lines are refused with
// exit status 1 and one clear message; TLS covers every export.
#include <algorithm>
#include <memory>

#include "test_nbd_support.hpp"

using namespace nbdtest;

namespace {

constexpr std::uint64_t mib = 1 << 20;

bool have_nbdinfo(boost::unit_test::test_unit_id) {
    return have("nbdinfo");
}
bool have_qemu(boost::unit_test::test_unit_id) {
    return have("qemu-img") && have("qemu-io");
}
bool have_tls_tools(boost::unit_test::test_unit_id) {
    return have("certtool") && have("nbdinfo") && have("qemu-io");
}

std::string export_arg(const std::string& name, const std::string& file, const std::string& more = "") {
    return "name=" + name + ",file=" + file + (more.empty() ? "" : "," + more);
}

/// qemu-io -f raw on `uri`, one -c per command.
std::vector<std::string> qemu_io(const std::string& uri, const std::vector<std::string>& cmds, bool read_only = false) {
    std::vector<std::string> argv{"qemu-io", "-f", "raw"};
    if (read_only) argv.push_back("-r");
    for (const auto& c : cmds) argv.insert(argv.end(), {"-c", c});
    argv.push_back(uri);
    return argv;
}

void check_io_ok(const std::vector<std::string>& argv, const run_result& r) {
    BOOST_CHECK_MESSAGE(r.status == 0, describe(argv, r));
    BOOST_CHECK_MESSAGE(r.out.find("Pattern verification failed") == std::string::npos, describe(argv, r));
    BOOST_CHECK_MESSAGE(r.err.empty(), describe(argv, r));
}

/// Run qemu-io and require success with no complaint.
void io_ok(const temp_dir& dir, const std::string& uri, const std::vector<std::string>& cmds, bool read_only = false) {
    const auto argv = qemu_io(uri, cmds, read_only);
    check_io_ok(argv, run(argv, dir.path()));
}

std::size_t count(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (auto pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1)) ++n;
    return n;
}

/// Waits until the server's log mentions `needle` `n` times.
bool log_shows(const server& srv, const std::string& needle, std::size_t n = 1) {
    return srv.wait_for_log([&](const std::string& log) { return count(log, needle) >= n; });
}

/// A byte-for-byte copy of an image file (a reference for "unchanged").
std::string copy_of(const std::string& image) {
    const std::string copy = image + ".orig";
    fs::copy_file(image, copy);
    return copy;
}

/// qemu-img compare of two QED files: identical?
bool identical(const temp_dir& dir, const std::string& a, const std::string& b) {
    const auto r = run({"qemu-img", "compare", "-f", "qed", "-F", "qed", a, b}, dir.path());
    BOOST_CHECK_MESSAGE(r.status == 0 || r.status == 1, "qemu-img compare failed: " << r.err);
    return r.status == 0 && r.out.find("Images are identical") != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(nbd_exports)

BOOST_AUTO_TEST_CASE(nbdinfo_list_shows_every_export, *boost::unit_test::precondition(have_nbdinfo)) {
    temp_dir dir("exports-list");
    const std::string a = dir / "a.qed";
    const std::string b = dir / "b.qed";
    const std::string c = dir / "c.raw";
    create_qed(a, 16 * mib);
    create_qed(b, 32 * mib);
    write_file(c, std::string(mib, '\0'));
    server srv(dir);
    srv.start({"-t", "--export", export_arg("alpha", a, "description=first disk,, with a comma"), "--export",
               export_arg("beta", b, "readonly=on"), "--export", export_arg("gamma", c, "format=raw,description=raw")},
              "", true);
    const auto list = NBD_RUN_OK(dir.path(), {"nbdinfo", "--list", "--json", srv.uri()});
    for (const char* want : {"\"export-name\": \"alpha\"", "\"export-name\": \"beta\"", "\"export-name\": \"gamma\"",
                             "\"description\": \"first disk, with a comma\"", "\"description\": \"raw\"",
                             "\"export-size\": 16777216", "\"export-size\": 33554432", "\"export-size\": 1048576"})
        BOOST_CHECK_MESSAGE(list.out.find(want) != std::string::npos, "missing " << want << " in " << list.out);
    // In the order given.
    BOOST_CHECK_LT(list.out.find("\"alpha\""), list.out.find("\"beta\""));
    BOOST_CHECK_LT(list.out.find("\"beta\""), list.out.find("\"gamma\""));
    // Per-export flags: only beta is read-only.
    const auto ro = NBD_RUN_OK(dir.path(), {"nbdinfo", "--json", srv.uri("beta")});
    BOOST_CHECK_MESSAGE(ro.out.find("\"is_read_only\": true") != std::string::npos, ro.out);
    const auto rw = NBD_RUN_OK(dir.path(), {"nbdinfo", "--json", srv.uri("alpha")});
    BOOST_CHECK_MESSAGE(rw.out.find("\"is_read_only\": false") != std::string::npos, rw.out);
    BOOST_CHECK_MESSAGE(rw.out.find("\"can_trim\": false") != std::string::npos, rw.out);
    const auto gamma_size = NBD_RUN_OK(dir.path(), {"nbdinfo", "--size", srv.uri("gamma")});
    BOOST_CHECK_EQUAL(gamma_size.out, "1048576\n");
    BOOST_CHECK_EQUAL(srv.stop(), 0);

    // --discard=unmap: TRIM on the writable export, not on the read-only one;
    // -e 2: multi-conn on both.
    srv.start({"-t", "-e", "2", "--discard=unmap", "--export", export_arg("alpha", a), "--export",
               export_arg("beta", b, "readonly=on")},
              "", true);
    const auto t = NBD_RUN_OK(dir.path(), {"nbdinfo", "--json", srv.uri("alpha")});
    BOOST_CHECK_MESSAGE(t.out.find("\"can_trim\": true") != std::string::npos, t.out);
    BOOST_CHECK_MESSAGE(t.out.find("\"can_multi_conn\": true") != std::string::npos, t.out);
    const auto t2 = NBD_RUN_OK(dir.path(), {"nbdinfo", "--json", srv.uri("beta")});
    BOOST_CHECK_MESSAGE(t2.out.find("\"can_trim\": false") != std::string::npos, t2.out);
    BOOST_CHECK_MESSAGE(t2.out.find("\"can_multi_conn\": true") != std::string::npos, t2.out);
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(a);
    verify_image(b);
}

BOOST_AUTO_TEST_CASE(qemu_reads_and_writes_the_image_it_names, *boost::unit_test::precondition(have_qemu)) {
    temp_dir dir("exports-qemu");
    const std::string a = dir / "a.qed";
    const std::string b = dir / "b.qed";
    create_qed(a, 16 * mib);
    create_qed(b, 32 * mib);
    const std::string da = random_bytes(256 * 1024, 1);
    const std::string db = random_bytes(256 * 1024, 2);
    write_image(a, 0, da);
    write_image(b, 0, db);
    const std::string b_orig = copy_of(b);
    const std::string a_orig = copy_of(a);

    server srv(dir);
    srv.start({"-t", "-e", "0", "--export", export_arg("a", a), "--export", export_arg("b", b)}, "", true);
    // Each export reads its own image.
    const auto sa = NBD_RUN_OK(dir.path(), {"qemu-img", "info", "--output=json", srv.uri("a")});
    BOOST_CHECK_MESSAGE(sa.out.find("\"virtual-size\": 16777216") != std::string::npos, sa.out);
    const auto sb = NBD_RUN_OK(dir.path(), {"qemu-img", "info", "--output=json", srv.uri("b")});
    BOOST_CHECK_MESSAGE(sb.out.find("\"virtual-size\": 33554432") != std::string::npos, sb.out);
    const std::string ra = dir / "a.raw";
    NBD_RUN_OK(dir.path(), {"qemu-img", "convert", "-f", "raw", "-O", "raw", srv.uri("a"), ra});
    const std::string got = read_file(ra);
    BOOST_REQUIRE_EQUAL(got.size(), 16 * mib);
    BOOST_CHECK(got.compare(0, da.size(), da) == 0);
    // Writes to a only.
    io_ok(dir, srv.uri("a"), {"write -P 0x11 1M 64k", "write -P 0x12 15M 1M"});
    io_ok(dir, srv.uri("a"), {"read -P 0x11 1M 64k", "read -P 0x12 15M 1M"});
    io_ok(dir, srv.uri("b"), {"read -P 0 1M 64k", "read -P 0 15M 1M"});
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    BOOST_CHECK(identical(dir, b, b_orig));  // b untouched
    BOOST_CHECK(!identical(dir, a, a_orig));
    verify_image(a, 0, da);
    verify_image(a, 1 * mib, std::string(64 * 1024, '\x11'));
    verify_image(a, 15 * mib, std::string(mib, '\x12'));

    // Now writes to b only, with both exports open and a client on each at once.
    const std::string a_after = dir / "a-after.qed";
    fs::copy_file(a, a_after);
    srv.start({"-t", "-e", "0", "--export", export_arg("a", a), "--export", export_arg("b", b)}, "", true);
    const auto reader = qemu_io(srv.uri("a"), {"read -P 0x11 1M 64k", "read -P 0x12 15M 1M"}, true);
    child r(reader, dir / "reader.out", dir / "reader.err");
    io_ok(dir, srv.uri("b"), {"write -z 0 64k", "read -P 0 0 64k"});
    const std::string src = dir / "src.raw";
    write_file(src, random_bytes(2 * mib, 3));
    NBD_RUN_OK(dir.path(), {"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, srv.uri("b")});
    const auto cmp = run({"qemu-img", "compare", "-f", "raw", "-F", "raw", src, srv.uri("b")}, dir.path());
    BOOST_CHECK_MESSAGE(cmp.status == 0 && cmp.out.find("Images are identical") != std::string::npos,
                        describe({"qemu-img compare src b"}, cmp));  // "identical" within src's 2M
    BOOST_CHECK_EQUAL(r.wait_for(60s).value_or(-1), 0);
    BOOST_CHECK_MESSAGE(read_file(dir / "reader.out").find("Pattern verification failed") == std::string::npos,
                        read_file(dir / "reader.out"));
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    BOOST_CHECK(identical(dir, a, a_after));  // a untouched this time
    verify_image(b, 0, read_file(src));
    verify_image(b, 2 * mib, std::string(mib, '\0'));
}

BOOST_AUTO_TEST_CASE(readonly_export_refuses_writes, *boost::unit_test::precondition(have_qemu)) {
    temp_dir dir("exports-ro");
    const std::string r = dir / "r.qed";
    const std::string w = dir / "w.qed";
    create_qed(r, 16 * mib);
    create_qed(w, 16 * mib);
    write_image(r, 0, std::string(64 * 1024, 'r'));
    const std::string r_orig = copy_of(r);
    server srv(dir);
    srv.start({"-t", "--export", export_arg("r", r, "readonly=on"), "--export", export_arg("w", w, "readonly=off")}, "",
              true);
    // qemu opens a read-only export only read-only: a writer is refused.
    const auto wr = qemu_io(srv.uri("r"), {"write -P 0x33 0 64k"});
    const auto refused = run(wr, dir.path());
    BOOST_CHECK_MESSAGE(refused.status != 0, describe(wr, refused));
    BOOST_CHECK_MESSAGE(
        refused.err.find("ermission denied") != std::string::npos || refused.err.find("read-only") != std::string::npos,
        describe(wr, refused));
    // Opened read-only, a write request is refused by qemu-io itself; reads work.
    io_ok(dir, srv.uri("r"), {"read -P 0x72 0 64k"}, true);
    const auto ro_write = qemu_io(srv.uri("r"), {"write -P 0x33 0 64k"}, true);
    const auto rw2 = run(ro_write, dir.path());
    BOOST_CHECK_MESSAGE(rw2.out.find("wrote") == std::string::npos, describe(ro_write, rw2));
    // The writable export beside it takes writes.
    io_ok(dir, srv.uri("w"), {"write -P 0x44 0 64k"});
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    BOOST_CHECK(identical(dir, r, r_orig));
    verify_image(w, 0, std::string(64 * 1024, '\x44'));

    // -r makes every export read-only; an export may not say otherwise.
    srv.start({"-t", "-r", "--export", export_arg("r", r), "--export", export_arg("w", w)}, "", true);
    const auto w_refused = run(qemu_io(srv.uri("w"), {"write -P 0x55 0 64k"}), dir.path());
    BOOST_CHECK_NE(w_refused.status, 0);
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(w, 0, std::string(64 * 1024, '\x44'));
}

BOOST_AUTO_TEST_CASE(unknown_export_is_refused_and_logged, *boost::unit_test::precondition(have_qemu)) {
    temp_dir dir("exports-unknown");
    const std::string a = dir / "a.qed";
    const std::string b = dir / "b.qed";
    create_qed(a, 16 * mib);
    create_qed(b, 16 * mib);
    server srv(dir);
    // TCP this time, so the log names an address with a port.
    srv.start({"-t", "--export", export_arg("a", a), "--export", export_arg("b", b)}, "");
    const auto argv = qemu_io(srv.uri("nope"), {"read 0 512"});
    const auto r = run(argv, dir.path());
    BOOST_CHECK_MESSAGE(r.status != 0, describe(argv, r));
    BOOST_CHECK_MESSAGE(r.err.find("export 'nope' not present") != std::string::npos, describe(argv, r));
    BOOST_REQUIRE(log_shows(srv, "asked for unknown export 'nope'"));
    // Exactly one line, naming the client's address and the name (qemu
    // asks in SET_META_CONTEXT and then in GO: still one line).
    BOOST_CHECK_EQUAL(count(srv.stderr_text(), "unknown export"), 1u);
    const std::string log = srv.stderr_text();
    const auto line_start = log.rfind('\n', log.find("unknown export 'nope'"));
    const std::string line = log.substr(line_start == std::string::npos ? 0 : line_start + 1,
                                        log.find('\n', log.find("unknown export 'nope'")) - line_start - 1);
    BOOST_CHECK_MESSAGE(line.find("(127.0.0.1:") != std::string::npos, line);
    // Without -v nothing else was logged for it.
    BOOST_CHECK_MESSAGE(count(log, "\n") == 1, log);

    // The empty name is an export's name like any other: with exports a
    // and b it names none of them.
    const auto empty = qemu_io(srv.uri(""), {"read 0 512"});
    const auto re = run(empty, dir.path());
    BOOST_CHECK_MESSAGE(re.status != 0, describe(empty, re));
    BOOST_CHECK(log_shows(srv, "asked for unknown export ''"));
    if (have("nbdinfo")) {
        const auto n = run({"nbdinfo", srv.uri("other")}, dir.path());
        BOOST_CHECK_NE(n.status, 0);
        BOOST_CHECK(log_shows(srv, "asked for unknown export 'other'"));
    }
    // The server goes on serving the exports it has.
    io_ok(dir, srv.uri("b"), {"write -P 0x66 0 4k", "read -P 0x66 0 4k"});
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(b, 0, std::string(4096, '\x66'));
    verify_image(a, 0, std::string(4096, '\0'));

    // An export named "" is the one an empty name reaches.
    srv.start({"-t", "--export", export_arg("", a), "--export", export_arg("b", b)}, "", true);
    io_ok(dir, srv.uri(""), {"write -P 0x77 0 4k"});
    io_ok(dir, srv.uri("b"), {"read -P 0x66 0 4k"});
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(a, 0, std::string(4096, '\x77'));
}

BOOST_AUTO_TEST_CASE(dir_serves_the_qed_images_of_a_directory, *boost::unit_test::precondition(have_qemu)) {
    temp_dir dir("exports-dir");
    const std::string images = dir / "images";
    fs::create_directories(images);
    create_qed(images + "/one.qed", 16 * mib);
    create_qed(images + "/two.qed", 8 * mib);
    write_file(images + "/notes.txt", "not an image\n");
    write_file(images + "/plain.raw", std::string(mib, '\0'));
    fs::create_directories(images + "/sub");
    server srv(dir);
    srv.start({"-t", "--dir", images}, "", true);
    const std::string log = srv.stderr_text();
    BOOST_CHECK_MESSAGE(log.find("skipping 'notes.txt': not a QED image") != std::string::npos, log);
    BOOST_CHECK_MESSAGE(log.find("skipping 'plain.raw': not a QED image") != std::string::npos, log);
    BOOST_CHECK_MESSAGE(log.find("skipping 'sub': not a regular file") != std::string::npos, log);
    if (have("nbdinfo")) {
        const auto list = NBD_RUN_OK(dir.path(), {"nbdinfo", "--list", "--json", srv.uri()});
        BOOST_CHECK(list.out.find("\"export-name\": \"one.qed\"") != std::string::npos);
        BOOST_CHECK(list.out.find("\"export-name\": \"two.qed\"") != std::string::npos);
        BOOST_CHECK(list.out.find("notes.txt") == std::string::npos);
        BOOST_CHECK(list.out.find("plain.raw") == std::string::npos);
    }
    const auto size = NBD_RUN_OK(dir.path(), {"qemu-img", "info", "--output=json", srv.uri("two.qed")});
    BOOST_CHECK_MESSAGE(size.out.find("\"virtual-size\": 8388608") != std::string::npos, size.out);
    io_ok(dir, srv.uri("two.qed"), {"write -P 0x2a 1M 64k"});
    const auto refused = run(qemu_io(srv.uri("notes.txt"), {"read 0 512"}), dir.path());
    BOOST_CHECK_NE(refused.status, 0);
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(images + "/two.qed", 1 * mib, std::string(64 * 1024, '\x2a'));
    verify_image(images + "/one.qed", 1 * mib, std::string(64 * 1024, '\0'));

    // --dir and --export together, --dir with -r.
    const std::string extra = dir / "extra.qed";
    create_qed(extra, 4 * mib);
    srv.start({"-t", "-r", "--dir", images, "--export", export_arg("extra", extra)}, "", true);
    const auto w = run(qemu_io(srv.uri("one.qed"), {"write 0 512"}), dir.path());
    BOOST_CHECK_NE(w.status, 0);
    io_ok(dir, srv.uri("extra"), {"read -P 0 0 64k"}, true);
    BOOST_CHECK_EQUAL(srv.stop(), 0);
}

BOOST_AUTO_TEST_CASE(nonsense_command_lines_are_refused) {
    temp_dir dir("exports-bad");
    const std::string a = dir / "a.qed";
    const std::string b = dir / "b.qed";
    create_qed(a, mib);
    create_qed(b, mib);
    const std::string empty_dir = dir / "empty";
    fs::create_directories(empty_dir);
    write_file(empty_dir + "/readme", "no images here\n");
    const std::string ea = "--export=" + export_arg("a", a);
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{ea, b}, "cannot be combined with --export or --dir"},
        {{"--dir", dir.path().string(), a}, "cannot be combined with --export or --dir"},
        {{"-L", ea}, "-L lists the exports of a running server"},
        {{"-L", "--dir", dir.path().string()}, "-L lists the exports of a running server"},
        {{ea, "--export", export_arg("a", b)}, "duplicate export name 'a'"},
        {{"--dir", dir.path().string(), "--export", export_arg("a.qed", b)}, "duplicate export name 'a.qed'"},
        {{"--dir", empty_dir}, "no QED images in the directory"},
        {{"--dir", dir / "missing"}, "--dir '" + (dir / "missing") + "': No such file or directory"},
        {{"-x", "disk", ea}, "-x/--export-name cannot be combined with --export"},
        {{"-D", "text", ea}, "-D/--description cannot be combined with --export"},
        {{"-f", "raw", "--dir", dir.path().string()}, "-f/--format cannot be combined with --export or --dir"},
        {{"--export", "name=a"}, "file= is required"},
        {{"--export", "file=" + a}, "name= is required"},
        {{"--export", export_arg("a", a, "colour=blue")}, "unknown key 'colour'"},
        {{"--export", export_arg("a", a, "readonly=maybe")}, "readonly must be on or off"},
        {{"--export", export_arg("a", a, "format=vmdk")}, "unknown format 'vmdk'"},
        {{"--export", export_arg("a", a, "name=b")}, "name= given twice"},
        {{"--export", "name=a,file=" + a + ",junk"}, "expected key=value, got 'junk'"},
        {{"-r", "--export", export_arg("a", a, "readonly=off")}, "readonly=off contradicts -r"},
        {{"--export", export_arg(std::string(5000, 'n'), a)}, "export name longer than 4096 bytes"},
    };
    server srv(dir);
    for (const auto& [args, want] : cases) {
        auto [st, err] = srv.start_failing(args, "");
        std::string shown;
        for (const auto& x : args) shown += x.substr(0, 80) + " ";
        BOOST_CHECK_MESSAGE(st == 1, shown << "-> status " << st << ": " << err);
        BOOST_CHECK_MESSAGE(err.find(want) != std::string::npos, shown << "-> " << err << " (wanted: " << want << ")");
        // One message (and the --help hint), not a cascade; --dir also
        // logs the entries it skipped.
        BOOST_CHECK_MESSAGE(count(err, "qed-nbd: ") - count(err, ": skipping '") == 1, shown << "-> " << err);
    }
    // The images were never opened: still clean, not locked.
    verify_image(a);
    verify_image(b);
}

BOOST_AUTO_TEST_CASE(an_image_that_fails_to_open_names_its_export) {
    temp_dir dir("exports-open");
    const std::string a = dir / "a.qed";
    create_qed(a, mib);
    server srv(dir);
    auto [st, err] =
        srv.start_failing({"--export", export_arg("a", a), "--export", export_arg("m", dir / "missing.qed")}, "");
    BOOST_CHECK_EQUAL(st, 1);
    BOOST_CHECK_MESSAGE(err.find("failed to open export 'm' ('" + (dir / "missing.qed") + "')") != std::string::npos,
                        err);
    // The same file twice, writable: the second open is refused by the
    // image lock (the first export holds it), and named.
    std::tie(st, err) = srv.start_failing({"--export", export_arg("a", a), "--export", export_arg("again", a)}, "");
    BOOST_CHECK_EQUAL(st, 1);
    BOOST_CHECK_MESSAGE(err.find("failed to open export 'again' ('" + a + "')") != std::string::npos, err);
    BOOST_CHECK_MESSAGE(err.find("export 'a'") == std::string::npos, err);
    // The first export's image was closed cleanly on the way out.
    verify_image(a);
    // Read-only twice is fine: readers share the lock.
    srv.start({"-t", "--export", export_arg("a", a, "readonly=on"), "--export", export_arg("again", a, "readonly=on")},
              "", true);
    BOOST_CHECK_EQUAL(srv.stop(), 0);
}

BOOST_AUTO_TEST_CASE(snapshot_covers_every_export, *boost::unit_test::precondition(have_qemu)) {
    temp_dir dir("exports-snapshot");
    const std::string a = dir / "a.qed";
    const std::string b = dir / "b.qed";
    create_qed(a, 16 * mib);
    create_qed(b, 16 * mib);
    const std::string a_orig = copy_of(a);
    const std::string b_orig = copy_of(b);
    const std::string tmp = dir / "tmp";
    fs::create_directories(tmp);
    ::setenv("TMPDIR", tmp.c_str(), 1);  // the child inherits it
    server srv(dir);
    srv.start({"-t", "-s", "--export", export_arg("a", a), "--export", export_arg("b", b)}, "", true);
    ::unsetenv("TMPDIR");
    io_ok(dir, srv.uri("a"), {"write -P 0x01 0 64k", "read -P 0x01 0 64k"});
    io_ok(dir, srv.uri("b"), {"write -P 0x02 0 64k", "read -P 0x02 0 64k"});
    io_ok(dir, srv.uri("a"), {"read -P 0x01 0 64k"});
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    BOOST_CHECK(identical(dir, a, a_orig));
    BOOST_CHECK(identical(dir, b, b_orig));
    BOOST_CHECK(fs::is_empty(tmp));  // the overlays are gone
}

BOOST_AUTO_TEST_CASE(tls_covers_every_export, *boost::unit_test::precondition(have_tls_tools)) {
    temp_dir dir("exports-tls");
    const std::string creds = dir / "creds";
    NBD_RUN_OK(dir.path(), {"bash", std::string(QED_TEST_SOURCE_DIR) + "/support/make-tls-creds.sh", creds});
    const std::string a = dir / "a.qed";
    const std::string b = dir / "b.qed";
    create_qed(a, 16 * mib);
    create_qed(b, 8 * mib);
    server srv(dir);
    srv.start({"-t", "--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + creds + "/psk", "--tls-creds", "tls0",
               "--export", export_arg("a", a), "--export", export_arg("b", b)},
              "");
    const std::string psk = "tls-psk-file=" + creds + "/psk/keys.psk";
    const std::string base = "nbds://alice@localhost:" + std::to_string(srv.port());
    const auto list = NBD_RUN_OK(dir.path(), {"nbdinfo", "--list", "--json", base + "/?" + psk});
    BOOST_CHECK(list.out.find("\"export-name\": \"a\"") != std::string::npos);
    BOOST_CHECK(list.out.find("\"export-name\": \"b\"") != std::string::npos);
    const auto b_size = NBD_RUN_OK(dir.path(), {"nbdinfo", "--size", base + "/b?" + psk});
    BOOST_CHECK_EQUAL(b_size.out, "8388608\n");
    // Without TLS no export is reachable, neither listed nor opened.
    BOOST_CHECK_NE(run({"nbdinfo", "--list", srv.uri()}, dir.path()).status, 0);
    BOOST_CHECK_NE(run(qemu_io(srv.uri("b"), {"write 0 512"}), dir.path()).status, 0);
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(b, 0, std::string(512, '\0'));
}

BOOST_AUTO_TEST_CASE(shared_counts_clients_of_all_exports, *boost::unit_test::precondition(have_qemu)) {
    // -e 1 (the default): one client at a time, whichever export it opens;
    // a client of export b waits while a client of export a is connected.
    temp_dir dir("exports-shared");
    const std::string a = dir / "a.qed";
    const std::string b = dir / "b.qed";
    create_qed(a, 16 * mib);
    create_qed(b, 16 * mib);
    server srv(dir);
    srv.start({"-t", "-v", "-e", "1", "--export", export_arg("a", a), "--export", export_arg("b", b)}, "", true);
    // qemu-io holds its connection while it sleeps between commands.
    child first(qemu_io(srv.uri("a"), {"write -P 0x0a 0 4k", "sleep 3000", "read -P 0x0a 0 4k"}), dir / "first.out",
                dir / "first.err");
    BOOST_REQUIRE(log_shows(srv, "client 1 (unix socket): handshake done"));
    child second(qemu_io(srv.uri("b"), {"write -P 0x0b 0 4k"}), dir / "second.out", dir / "second.err");
    std::this_thread::sleep_for(1s);
    BOOST_CHECK_MESSAGE(!second.poll(), "the second client was served while the first was connected");
    BOOST_CHECK(srv.stderr_text().find("client 2 (unix socket): handshake done") == std::string::npos);
    BOOST_CHECK_EQUAL(first.wait_for(30s).value_or(-1), 0);
    BOOST_CHECK_EQUAL(second.wait_for(30s).value_or(-1), 0);
    BOOST_CHECK_MESSAGE(read_file(dir / "second.err").empty(), read_file(dir / "second.err"));
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(a, 0, std::string(4096, '\x0a'));
    verify_image(b, 0, std::string(4096, '\x0b'));
}

// --threads: the exports' images on threads of their own (the log says
// which), eight clients at once (a copy into each export and a qemu-io
// writing and reading back elsewhere in it), with 1, 2 and 4 threads;
// every image ends as written, NEED_CHECK clear, check clean.
BOOST_AUTO_TEST_CASE(threads_serve_exports_at_once, *boost::unit_test::precondition(have_qemu)) {
    for (const unsigned threads : {1u, 2u, 4u}) {
        BOOST_TEST_CONTEXT("--threads " << threads) {
            temp_dir dir("exports-threads-" + std::to_string(threads));
            std::vector<std::string> args{"-t", "-v", "-e", "0", "--threads", std::to_string(threads)};
            std::vector<std::string> images, sources;
            for (int i = 0; i < 4; ++i) {
                const std::string n = std::to_string(i);
                images.push_back(dir / ("e" + n + ".qed"));
                create_qed(images.back(), 8 * mib);
                sources.push_back(dir / ("s" + n + ".raw"));
                write_file(sources.back(), random_bytes(4 * mib, 10 + static_cast<unsigned>(i)));
                args.insert(args.end(), {"--export", export_arg("e" + n, images.back())});
            }
            server srv(dir);
            srv.start(args, "", true);
            if (threads > 1) {
                const std::string last = std::to_string(threads) + " of " + std::to_string(threads);
                BOOST_CHECK_MESSAGE(log_shows(srv, "thread " + last), srv.stderr_text());
            } else {
                BOOST_CHECK(srv.stderr_text().find(", thread ") == std::string::npos);
            }
            std::vector<std::unique_ptr<child>> clients;
            for (int i = 0; i < 4; ++i) {
                const std::string n = std::to_string(i);
                clients.push_back(
                    std::make_unique<child>(std::vector<std::string>{"qemu-img", "convert", "-n", "-W", "-f", "raw",
                                                                     "-O", "raw", sources[i], srv.uri("e" + n)},
                                            dir / ("copy" + n + ".out"), dir / ("copy" + n + ".err")));
                clients.push_back(std::make_unique<child>(
                    qemu_io(srv.uri("e" + n), {"write -P 0x5" + n + " 6M 256k", "write -z 7M 64k",
                                               "read -P 0x5" + n + " 6M 256k", "read -P 0 7M 64k", "flush"}),
                    dir / ("io" + n + ".out"), dir / ("io" + n + ".err")));
            }
            for (std::size_t k = 0; k < clients.size(); ++k) {
                BOOST_CHECK_EQUAL(clients[k]->wait_for(120s).value_or(-1), 0);
                const std::string which = (k % 2 ? "io" : "copy") + std::to_string(k / 2);
                const std::string out = read_file(dir / (which + ".out"));
                BOOST_CHECK_MESSAGE(out.find("Pattern verification failed") == std::string::npos, out);
                BOOST_CHECK_MESSAGE(read_file(dir / (which + ".err")).empty(), read_file(dir / (which + ".err")));
            }
            BOOST_CHECK_EQUAL(srv.stop(), 0);
            for (int i = 0; i < 4; ++i) {
                verify_image(images[i], 0, read_file(sources[i]));
                verify_image(images[i], 6 * mib, std::string(256 * 1024, static_cast<char>(0x50 + i)));
            }
        }
    }
}

// --threads with TLS: a TLS connection stays on the thread of its
// handshake and its image requests cross to the export's thread; nbdcopy
// writes export b (on the second thread) and reads it back.
BOOST_AUTO_TEST_CASE(threads_with_tls, *boost::unit_test::precondition(have_tls_tools)) {
    if (!have("nbdcopy")) return;
    temp_dir dir("exports-threads-tls");
    const std::string creds = dir / "creds";
    NBD_RUN_OK(dir.path(), {"bash", std::string(QED_TEST_SOURCE_DIR) + "/support/make-tls-creds.sh", creds});
    const std::string a = dir / "a.qed";
    const std::string b = dir / "b.qed";
    create_qed(a, 8 * mib);
    create_qed(b, 8 * mib);
    const std::string src = dir / "src.raw";
    write_file(src, random_bytes(8 * mib, 7));
    server srv(dir);
    srv.start({"-t", "-v", "--threads", "2", "--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + creds + "/psk",
               "--tls-creds", "tls0", "--export", export_arg("a", a), "--export", export_arg("b", b)},
              "");
    BOOST_CHECK_MESSAGE(log_shows(srv, "thread 2 of 2"), srv.stderr_text());
    const std::string uri =
        "nbds://alice@localhost:" + std::to_string(srv.port()) + "/b?tls-psk-file=" + creds + "/psk/keys.psk";
    NBD_RUN_OK(dir.path(), {"nbdcopy", "--requests=16", src, uri});
    const std::string back = dir / "back.raw";
    NBD_RUN_OK(dir.path(), {"nbdcopy", uri, back});
    BOOST_CHECK(read_file(back) == read_file(src));
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(b, 0, read_file(src));
    verify_image(a, 0, std::string(4096, '\0'));
}

BOOST_AUTO_TEST_SUITE_END()
