// SPDX-License-Identifier: BSL-1.0
// Image locking against the real binaries: qed-nbd / qed-io / qed-img and
// qemu-nbd / qemu-io / qemu-img refuse each other the way QEMU's tools
// refuse one another, the lock bytes in /proc/locks are QEMU's, and every
// refusal leaves the image byte for byte as it was.
#include <sys/sysmacros.h>

#include <algorithm>

#include "test_nbd_support.hpp"
#include "test_tools_support.hpp"

namespace {

using namespace nbdtest;
using qed::tools_test::qed_img_path;
using qed::tools_test::qed_io_path;

const std::string locked_write = "Failed to get \"write\" lock";
const std::string locked_shared_write = "Failed to get shared \"write\" lock";

/// This file's lock ranges in /proc/locks ("OFDLCK READ 100-101"), sorted.
std::vector<std::string> locks_of(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw std::runtime_error("stat " + path);
    char dev[64];
    std::snprintf(dev, sizeof dev, "%02x:%02x:%llu", major(st.st_dev), minor(st.st_dev),
                  static_cast<unsigned long long>(st.st_ino));
    std::vector<std::string> out;
    std::ifstream in("/proc/locks");
    for (std::string line; std::getline(in, line);) {
        std::istringstream ls(line);
        std::string id, kind, advisory, type, pid, where, start, end;
        ls >> id >> kind;
        if (kind == "->") ls >> kind;  // a waiter
        ls >> advisory >> type >> pid >> where >> start >> end;
        if (where != dev) continue;
        out.push_back(kind + " " + type + " " + start + "-" + end);
    }
    std::sort(out.begin(), out.end());
    return out;
}

/// Wait until the file holds some lock (a holder started in the background is ready).
void wait_for_locks(const std::string& path, std::size_t at_least = 1) {
    const auto until = std::chrono::steady_clock::now() + 15s;
    while (locks_of(path).size() < at_least) {
        if (std::chrono::steady_clock::now() > until) BOOST_FAIL("no lock appeared on " << path);
        std::this_thread::sleep_for(10ms);
    }
}

void wait_for_no_locks(const std::string& path) {
    const auto until = std::chrono::steady_clock::now() + 15s;
    while (!locks_of(path).empty()) {
        if (std::chrono::steady_clock::now() > until) BOOST_FAIL("locks on " << path << " were not released");
        std::this_thread::sleep_for(10ms);
    }
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += x + "; ";
    return s;
}

/// QEMU's lock set for one open of a QED file: read-write, or read-only.
const std::vector<std::string> rw_locks{"OFDLCK READ 100-101", "OFDLCK READ 103-103", "OFDLCK READ 201-201",
                                        "OFDLCK READ 203-203"};
const std::vector<std::string> ro_locks{"OFDLCK READ 100-100", "OFDLCK READ 201-201", "OFDLCK READ 203-203"};

/// A holder started in the background (qemu-nbd, qed-io sleeping...).
struct holder {
    holder(const temp_dir& dir, const std::vector<std::string>& argv, const std::string& image) : image_(image) {
        const std::string n = std::to_string(++count);
        proc.start(argv, dir.path() / ("holder-" + n + ".out"), dir.path() / ("holder-" + n + ".err"));
        wait_for_locks(image);
    }
    // The kernel drops a dead process's locks when the last reference to
    // its open file goes, which for a file registered with an io_uring ring
    // is the ring's teardown, done asynchronously after exit: wait for it,
    // so the next holder's locks are the ones the next check sees.
    ~holder() {
        proc.kill_hard();
        wait_for_no_locks(image_);
    }
    std::string image_;
    child proc;
    static inline int count = 0;
};

/// Run a command that must be refused with a lock error naming the file; the image is unchanged.
void expect_refused(const temp_dir& dir, const std::vector<std::string>& argv, const std::string& image,
                    const std::string& lock_text, const std::string& named = {}) {
    const std::string before = read_file(image);
    const auto r = run(argv, dir.path());
    BOOST_CHECK_MESSAGE(r.status == 1, describe(argv, r));
    BOOST_CHECK_MESSAGE(r.err.find(lock_text) != std::string::npos, describe(argv, r));
    const std::string name = named.empty() ? fs::path(image).filename().string() : named;
    BOOST_CHECK_MESSAGE(r.err.find("Is another process using the image [") != std::string::npos &&
                            r.err.find(name) != std::string::npos,
                        describe(argv, r));
    BOOST_CHECK_MESSAGE(read_file(image) == before, "image changed by a refused " << argv[0]);
}

void expect_ok(const temp_dir& dir, const std::vector<std::string>& argv) {
    const auto r = run(argv, dir.path());
    BOOST_CHECK_MESSAGE(r.status == 0, describe(argv, r));
}

/// A 64 MiB QED image holding 0x5a in its first MiB, made by qemu-img/qemu-io.
std::string make_image(const temp_dir& dir, const std::string& name) {
    const std::string p = dir / name;
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", p, "64M"});
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "write -P 0x5a 0 1M", p});
    return p;
}

bool have_qemu() {
    return have("qemu-img") && have("qemu-io") && have("qemu-nbd");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(locking)

// The lock bytes, bit for bit: qed-nbd holds what qemu-nbd holds, read-write
// and read-only, on an image and on its backing file.
BOOST_AUTO_TEST_CASE(lock_bytes_match_qemu_nbd) {
    if (!have_qemu()) return;
    temp_dir dir("lock-bytes");
    const std::string base = make_image(dir, "base.qed");
    const std::string top = dir / "top.qed";
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", "-b", base, "-F", "qed", top});
    for (const bool ro : {false, true}) {
        for (const std::string& image : {base, top}) {
            std::vector<std::string> qemu_locks, qemu_base_locks, ours, our_base_locks;
            {
                std::vector<std::string> argv{"qemu-nbd", "-t", "-k", dir / "q.sock", "-f", "qed"};
                if (ro) argv.push_back("-r");
                argv.push_back(image);
                holder h(dir, argv, image);
                if (image == top) wait_for_locks(base);
                qemu_locks = locks_of(image);
                qemu_base_locks = locks_of(base);
            }
            wait_for_no_locks(image);
            wait_for_no_locks(base);
            {
                server s(dir);
                std::vector<std::string> args{"-t", "-f", "qed"};
                if (ro) args.push_back("-r");
                s.start(args, image, true);
                wait_for_locks(image);
                if (image == top) wait_for_locks(base);
                ours = locks_of(image);
                our_base_locks = locks_of(base);
            }
            wait_for_no_locks(image);
            BOOST_TEST_MESSAGE((ro ? "read-only " : "read-write ")
                               << fs::path(image).filename().string() << ": qemu-nbd " << join(qemu_locks)
                               << " | qed-nbd " << join(ours));
            BOOST_CHECK_MESSAGE(ours == qemu_locks, "qed-nbd: " << join(ours) << " qemu-nbd: " << join(qemu_locks));
            BOOST_CHECK_MESSAGE(our_base_locks == qemu_base_locks,
                                "backing: qed-nbd " << join(our_base_locks) << " qemu-nbd " << join(qemu_base_locks));
            BOOST_CHECK_MESSAGE(ours == (ro ? ro_locks : rw_locks), join(ours));
            if (image == top) BOOST_CHECK_MESSAGE(our_base_locks == ro_locks, join(our_base_locks));
        }
    }
}

// qed-nbd serving: QEMU's writers, repairers and resizers are refused,
// qemu-img info -U is let in.
BOOST_AUTO_TEST_CASE(qed_nbd_serving_refuses_qemu) {
    if (!have_qemu()) return;
    temp_dir dir("lock-qemu-in");
    const std::string image = make_image(dir, "disk.qed");
    server s(dir);
    s.start({"-t", "-f", "qed"}, image, true);
    wait_for_locks(image);  // the pid file comes before the open
    expect_refused(dir, {"qemu-io", "-f", "qed", "-c", "write -P 0xbb 0 64k", image}, image, locked_write);
    expect_refused(dir, {"qemu-img", "check", "-r", "all", image}, image, locked_write);
    expect_refused(dir, {"qemu-img", "resize", "-f", "qed", image, "128M"}, image, locked_write);
    expect_refused(dir, {"qemu-io", "-r", "-f", "qed", "-c", "read 0 64k", image}, image, locked_shared_write);
    expect_ok(dir, {"qemu-img", "info", "-U", image});
    expect_ok(dir, {"qemu-io", "-r", "-U", "-f", "qed", "-c", "read -P 0x5a 0 64k", image});
    BOOST_CHECK_EQUAL(s.stop(), 0);
    wait_for_no_locks(image);
    // Once the server is gone the same writer gets in.
    expect_ok(dir, {"qemu-io", "-f", "qed", "-c", "write -P 0xbb 0 64k", image});
}

// qemu-nbd serving: our writer, repair, resize and commit are refused,
// qed-img info -U is let in.
BOOST_AUTO_TEST_CASE(qemu_nbd_serving_refuses_ours) {
    if (!have_qemu()) return;
    temp_dir dir("lock-ours-in");
    const std::string image = make_image(dir, "disk.qed");
    const std::string top = dir / "top.qed";
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", "-b", image, "-F", "qed", top});
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "write -P 0x77 0 64k", top});
    {
        holder h(dir, {"qemu-nbd", "-t", "-k", dir / "q.sock", "-f", "qed", image}, image);
        expect_refused(dir, {qed_io_path(), "-f", "qed", "-c", "write -P 0xbb 0 64k", image}, image, locked_write);
        expect_refused(dir, {qed_img_path(), "check", "-r", "all", image}, image, locked_write);
        expect_refused(dir, {qed_img_path(), "resize", "-f", "qed", image, "128M"}, image, locked_write);
        expect_refused(dir, {qed_io_path(), "-r", "-f", "qed", "-c", "read 0 64k", image}, image, locked_shared_write);
        expect_refused(dir, {qed_img_path(), "create", "-q", "-f", "qed", image, "1M"}, image, locked_write);
        // Commit into a backing file that qemu-nbd serves.
        const std::string top_before = read_file(top);
        expect_refused(dir, {qed_img_path(), "commit", top}, image, locked_write);
        BOOST_CHECK(read_file(top) == top_before);
        const auto info = run({qed_img_path(), "info", "-U", image}, dir.path());
        BOOST_CHECK_MESSAGE(info.status == 0 && info.out.find("file format: qed") != std::string::npos,
                            describe({"qed-img info -U"}, info));
        expect_ok(dir, {qed_io_path(), "-r", "-U", "-f", "qed", "-c", "read -P 0x5a 0 64k", image});
        expect_ok(dir, {qed_img_path(), "map", "-U", image});
        expect_ok(dir, {qed_img_path(), "check", "-U", image});
        expect_ok(dir, {qed_img_path(), "compare", "-U", image, image});
        expect_ok(dir, {qed_img_path(), "convert", "-U", "-O", "raw", image, dir / "copy.raw"});
        expect_ok(dir, {qed_img_path(), "bench", "-U", "-c", "16", image});
    }
    wait_for_no_locks(image);
    expect_ok(dir, {qed_img_path(), "commit", top});
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "read -P 0x77 0 64k", image});
}

// Two of our own processes; -U needs -r.
BOOST_AUTO_TEST_CASE(two_of_our_processes) {
    temp_dir dir("lock-ours");
    const std::string image = dir / "disk.qed";
    NBD_RUN_OK(dir.path(), {qed_img_path(), "create", "-q", "-f", "qed", image, "64M"});
    {
        holder h(dir, {qed_io_path(), "-f", "qed", "-c", "sleep 60000", image}, image);
        BOOST_CHECK_MESSAGE(locks_of(image) == rw_locks, join(locks_of(image)));
        expect_refused(dir, {qed_io_path(), "-f", "qed", "-c", "write 0 64k", image}, image, locked_write);
        expect_refused(dir, {qed_io_path(), "-r", "-c", "read 0 64k", image}, image, locked_shared_write);
        expect_refused(dir, {qed_img_path(), "check", "-r", "leaks", image}, image, locked_write);
        expect_refused(dir, {qed_img_path(), "info", image}, image, locked_shared_write);
        const auto r = run({qed_io_path(), "-U", "-c", "read 0 64k", image}, dir.path());
        BOOST_CHECK_MESSAGE(
            r.status == 1 && r.err.find("force-share=on can only be used with read-only images") != std::string::npos,
            describe({"qed-io -U"}, r));
        expect_ok(dir, {qed_io_path(), "-r", "-U", "-c", "read 0 64k", image});
    }
    // Two readers share the image; a writer is refused by either.
    {
        holder h(dir, {qed_io_path(), "-r", "-f", "qed", "-c", "sleep 60000", image}, image);
        BOOST_CHECK_MESSAGE(locks_of(image) == ro_locks, join(locks_of(image)));
        expect_ok(dir, {qed_img_path(), "info", image});
        expect_ok(dir, {qed_img_path(), "check", image});
        expect_refused(dir, {qed_io_path(), "-c", "write 0 64k", image}, image, locked_write);
    }
}

// A backing file under a read-write overlay: its writers are refused, its readers are not.
BOOST_AUTO_TEST_CASE(backing_file_in_use_refused_as_writer) {
    temp_dir dir("lock-backing");
    const std::string base = dir / "base.qed";
    const std::string top = dir / "top.qed";
    NBD_RUN_OK(dir.path(), {qed_img_path(), "create", "-q", "-f", "qed", base, "64M"});
    NBD_RUN_OK(dir.path(), {qed_img_path(), "create", "-q", "-f", "qed", "-b", "base.qed", "-F", "qed", top});
    server s(dir);
    s.start({"-t", "-f", "qed"}, top, true);
    wait_for_locks(base);
    BOOST_CHECK_MESSAGE(locks_of(base) == ro_locks, join(locks_of(base)));
    expect_refused(dir, {qed_io_path(), "-f", "qed", "-c", "write 0 64k", base}, base, locked_write);
    expect_refused(dir, {qed_img_path(), "resize", base, "128M"}, base, locked_write);
    if (have("qemu-io")) expect_refused(dir, {"qemu-io", "-f", "qed", "-c", "write 0 64k", base}, base, locked_write);
    expect_ok(dir, {qed_io_path(), "-r", "-f", "qed", "-c", "read 0 64k", base});
    // A second overlay opening the same backing file read-only shares it.
    const std::string top2 = dir / "top2.qed";
    NBD_RUN_OK(dir.path(), {qed_img_path(), "create", "-q", "-f", "qed", "-b", "base.qed", "-F", "qed", top2});
    expect_ok(dir, {qed_io_path(), "-f", "qed", "-c", "write 0 64k", top2});
    BOOST_CHECK_EQUAL(s.stop(), 0);
}

// OFD locks belong to the descriptor: a holder killed with SIGKILL leaves none.
BOOST_AUTO_TEST_CASE(locks_gone_after_kill_9) {
    temp_dir dir("lock-kill");
    const std::string image = dir / "disk.qed";
    NBD_RUN_OK(dir.path(), {qed_img_path(), "create", "-q", "-f", "qed", image, "64M"});
    server s(dir);
    s.start({"-t", "-f", "qed"}, image, true);
    wait_for_locks(image);  // the pid file comes before the open
    BOOST_CHECK(locks_of(image) == rw_locks);
    expect_refused(dir, {qed_io_path(), "-c", "write 0 64k", image}, image, locked_write);
    ::kill(s.process().pid(), SIGKILL);
    s.wait();
    wait_for_no_locks(image);
    expect_ok(dir, {qed_io_path(), "-c", "write -P 0x33 0 64k", image});
    expect_ok(dir, {qed_io_path(), "-r", "-c", "read -P 0x33 0 64k", image});
}

// The library: a second open in one process is refused with one line naming
// the file and the lock; locking=off takes none (so QEMU's writer gets in).
BOOST_AUTO_TEST_CASE(library_locking_on_and_off) {
    temp_dir dir("lock-lib");
    const std::string image = dir / "disk.qed";
    create_qed(image, 64 << 20);
    boost::asio::io_context ioc;
    std::vector<std::string> log;
    qed::open_options o;
    o.log = [&log](std::string_view l) { log.emplace_back(l); };
    auto [ec1, a] = await<std::error_code, qed::image>(
        ioc, [&](auto h) { qed::image::async_open(ioc.get_executor(), image, o, std::move(h)); });
    BOOST_REQUIRE(!ec1);
    BOOST_CHECK(locks_of(image) == rw_locks);
    const std::string before = read_file(image);
    auto [ec2, b] = await<std::error_code, qed::image>(
        ioc, [&](auto h) { qed::image::async_open(ioc.get_executor(), image, o, std::move(h)); });
    BOOST_CHECK(ec2 == qed::errc::image_locked);
    BOOST_REQUIRE_EQUAL(log.size(), 1u);
    BOOST_CHECK_EQUAL(log[0],
                      image + ": Failed to get \"write\" lock: Is another process using the image [" + image + "]?");
    BOOST_CHECK(read_file(image) == before);
    // Read-only with force-share is let in and adds only consistent-read.
    qed::open_options fs_o = o;
    fs_o.read_only = true;
    fs_o.force_share = true;
    auto [ec3, c] = await<std::error_code, qed::image>(
        ioc, [&](auto h) { qed::image::async_open(ioc.get_executor(), image, fs_o, std::move(h)); });
    BOOST_CHECK(!ec3);
    BOOST_CHECK_MESSAGE(locks_of(image).size() == rw_locks.size() + 1, join(locks_of(image)));
    if (c) std::get<0>(await<std::error_code>(ioc, [&](auto h) { c.async_close(std::move(h)); }));
    std::get<0>(await<std::error_code>(ioc, [&](auto h) { a.async_close(std::move(h)); }));
    BOOST_CHECK(locks_of(image).empty());

    qed::open_options off = o;
    off.locking = qed::lock_mode::off;
    auto [ec4, d] = await<std::error_code, qed::image>(
        ioc, [&](auto h) { qed::image::async_open(ioc.get_executor(), image, off, std::move(h)); });
    BOOST_REQUIRE(!ec4);
    BOOST_CHECK_MESSAGE(locks_of(image).empty(), join(locks_of(image)));
    // Nothing stops another writer now (the test writes nothing through `d`).
    if (have("qemu-io")) NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "write -P 0x44 0 4k", image});
    // locking=on behaves as auto on a file system that has OFD locks.
    qed::open_options on = o;
    on.locking = qed::lock_mode::on;
    on.read_only = true;
    auto [ec5, e] = await<std::error_code, qed::image>(
        ioc, [&](auto h) { qed::image::async_open(ioc.get_executor(), image, on, std::move(h)); });
    BOOST_CHECK(!ec5);
    BOOST_CHECK(locks_of(image) == ro_locks);
    if (e) std::get<0>(await<std::error_code>(ioc, [&](auto h) { e.async_close(std::move(h)); }));
    std::get<0>(await<std::error_code>(ioc, [&](auto h) { d.async_close(std::move(h)); }));
    BOOST_CHECK(locks_of(image).empty());
}

// The repro of the issue: a served image, a second writer in the middle of
// the client's writes. The writer is refused, the image stays consistent
// and holds exactly what the client wrote.
BOOST_AUTO_TEST_CASE(issue_repro_refused_not_corrupted) {
    if (!have("qemu-io") || !have("qemu-img")) return;
    temp_dir dir("lock-repro");
    const std::string image = dir / "disk.qed";
    NBD_RUN_OK(dir.path(), {qed_img_path(), "create", "-q", "-f", "qed", image, "1G"});
    server s(dir);
    s.start({"-t", "-f", "qed"}, image, true);
    wait_for_locks(image);  // the pid file comes before the open
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "raw", "-c", "write -P 0xaa 0 1M", s.uri()});
    const auto r = run({qed_io_path(), "-c", "write -P 0xbb 512M 1M", image}, dir.path());
    BOOST_CHECK_EQUAL(r.status, 1);
    const auto lines = qed::tools_test::result::lines(r.err);
    BOOST_CHECK_MESSAGE(lines.size() == 1 && lines[0].find(locked_write) != std::string::npos &&
                            lines[0].find("disk.qed") != std::string::npos,
                        r.err);
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "raw", "-c", "write -P 0xcc 1M 1M", s.uri()});
    BOOST_CHECK_EQUAL(s.stop(), 0);
    wait_for_no_locks(image);
    const auto check = run({"qemu-img", "check", image}, dir.path());
    BOOST_CHECK_MESSAGE(check.status == 0, describe({"qemu-img check"}, check));
    const auto data = NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "read -P 0xaa 0 1M", "-c",
                                              "read -P 0xcc 1M 1M", "-c", "read -P 0 512M 1M", image});
    BOOST_CHECK_MESSAGE(data.out.find("verification failed") == std::string::npos, data.out);
}

BOOST_AUTO_TEST_SUITE_END()
