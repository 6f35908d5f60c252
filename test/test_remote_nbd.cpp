// SPDX-License-Identifier: BSL-1.0
// Images on NBD exports: the libnbd block file against real servers started
// here (nbdkit memory, nbdkit file, qemu-nbd), through the library, the
// tools (qed-img, qed-io, qed-nbd) and QEMU's own tools.
#include <boost/asio/io_context.hpp>
#include <cerrno>
#include <fstream>

#include "qed/block_file.hpp"
#include "test_nbd_support.hpp"

using namespace nbdtest;

namespace {

std::string tool(const std::string& name) {
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    return (self.parent_path().parent_path() / "src" / "tools" / name).string();
}

bool have_servers(boost::unit_test::test_unit_id) {
    return have("nbdkit") && have("qemu-nbd") && have("qemu-img");
}

/// An NBD server (nbdkit or qemu-nbd) on a Unix socket, or TCP on a free
/// port, killed when the test ends. Started with its pid file, so it is
/// listening when start() returns.
class nbd_server {
public:
    explicit nbd_server(const temp_dir& dir) : dir_(dir) {}

    /// nbdkit PLUGIN ARGS... (e.g. "memory", {"size=64M"}).
    void nbdkit(const std::string& plugin, const std::vector<std::string>& args, bool tcp = false,
                bool read_only = false) {
        for (int attempt = 0; attempt < 5; ++attempt) {
            std::vector<std::string> argv{"nbdkit", "-f", "-P", pid_file()};
            if (read_only) argv.push_back("-r");
            listen(argv, tcp, "-U", "-p", "-i");
            argv.push_back(plugin);
            argv.insert(argv.end(), args.begin(), args.end());
            if (launch(argv)) return;
        }
        BOOST_FAIL("nbdkit did not start: " << read_file(err_));
    }

    /// Listen on this Unix socket (for a server restarted at the same address).
    void at_socket(const std::string& path) { fixed_socket_ = path; }

    /// qemu-nbd -f FORMAT FILE, persistent, several clients at once.
    void qemu_nbd(const std::string& file, const std::string& format = "raw", bool read_only = false) {
        for (int attempt = 0; attempt < 5; ++attempt) {
            std::vector<std::string> argv{"qemu-nbd", "-t", "-e", "8", "-f", format, "--pid-file", pid_file()};
            if (read_only) argv.push_back("-r");
            listen(argv, false, "-k", "-p", "-b");
            argv.push_back(file);
            if (launch(argv)) return;
        }
        BOOST_FAIL("qemu-nbd did not start: " << read_file(err_));
    }

    std::string uri() const {
        if (port_) return "nbd://127.0.0.1:" + std::to_string(port_) + "/";
        return "nbd+unix:///?socket=" + socket_;
    }
    void stop() { proc_.kill_hard(); }

private:
    std::string pid_file() {
        static int count = 0;  // unique names for every server of the process
        n_ = ++count;
        pid_ = dir_ / ("server-" + std::to_string(n_) + ".pid");
        return pid_;
    }
    void listen(std::vector<std::string>& argv, bool tcp, const char* unix_flag, const char* port_flag,
                const char* addr_flag) {
        if (tcp) {
            port_ = free_port();
            argv.insert(argv.end(), {port_flag, std::to_string(port_), addr_flag, "127.0.0.1"});
        } else {
            port_ = 0;
            socket_ = fixed_socket_.empty() ? dir_ / ("server-" + std::to_string(n_) + ".sock") : fixed_socket_;
            std::error_code ignored;
            fs::remove(socket_, ignored);  // a killed server leaves its socket behind
            argv.insert(argv.end(), {unix_flag, socket_});
        }
    }
    bool launch(const std::vector<std::string>& argv) {
        err_ = dir_ / ("server-" + std::to_string(n_) + ".err");
        proc_.start(argv, dir_ / ("server-" + std::to_string(n_) + ".out"), err_);
        const auto until = std::chrono::steady_clock::now() + 15s;
        while (!fs::exists(pid_) || fs::file_size(pid_) == 0) {
            if (proc_.poll()) return false;  // (a TCP port taken meanwhile: try another)
            if (std::chrono::steady_clock::now() > until) return false;
            std::this_thread::sleep_for(5ms);
        }
        return true;
    }

    const temp_dir& dir_;
    child proc_;
    int n_ = 0;
    std::string pid_, err_, socket_, fixed_socket_;
    std::uint16_t port_ = 0;
};

std::string qemu_check_json(const temp_dir& dir, const std::string& name) {
    return run({"qemu-img", "check", "--output=json", name}, dir.path()).out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(remote_nbd, *boost::unit_test::precondition(have_servers))

// The block file itself: scatter-gather with large and small pieces (direct
// commands and gathered ones), reads past the end, FUA, flush, holes, and
// the fixed size (resize past the export: ENOSPC, with the export named).
BOOST_AUTO_TEST_CASE(block_file_on_nbdkit_memory) {
    temp_dir dir("remote-bf");
    nbd_server srv(dir);
    srv.nbdkit("memory", {"size=4M"});
    boost::asio::io_context ioc;
    std::vector<std::string> logs;
    qed::file_options fo;
    fo.read_only = false;
    fo.log = [&](std::string_view l) { logs.emplace_back(l); };
    std::error_code ec;
    auto f = qed::open_file(ioc.get_executor(), srv.uri(), fo, ec);
    BOOST_REQUIRE_MESSAGE(f, ec.message());
    BOOST_CHECK(qed::is_remote_name(srv.uri()));
    BOOST_CHECK(f->fixed_size());
    BOOST_CHECK_EQUAL(std::string(f->backend_name()), "nbd");
    BOOST_CHECK_EQUAL(f->size(ec), 4u << 20);

    // 512 + 128 KiB + 512 + 512 + 256 KiB: two direct commands, two gathered.
    const std::string data = random_bytes(512 + (128 << 10) + 1024 + (256 << 10), 7);
    const std::size_t cuts[] = {0, 512, 512 + (128 << 10), 1024 + (128 << 10), 1536 + (128 << 10), data.size()};
    std::vector<boost::asio::const_buffer> wb;
    for (int i = 0; i < 5; ++i) wb.emplace_back(data.data() + cuts[i], cuts[i + 1] - cuts[i]);
    auto [wec, wn] = await<std::error_code, std::size_t>(
        ioc, [&](auto h) { f->async_write_fua_at(4096, wb, qed::io_handler(std::move(h))); });
    BOOST_REQUIRE_MESSAGE(!wec, wec.message());
    BOOST_CHECK_EQUAL(wn, data.size());

    // Read it back in other pieces, reaching 8 KiB past the end of the
    // export at another offset.
    std::string back(data.size(), '\0');
    std::vector<boost::asio::mutable_buffer> rb;
    const std::size_t rcuts[] = {0, 1024, 100000, 100512, back.size()};
    for (int i = 0; i < 4; ++i) rb.emplace_back(back.data() + rcuts[i], rcuts[i + 1] - rcuts[i]);
    auto [rec, rn] = await<std::error_code, std::size_t>(
        ioc, [&](auto h) { f->async_read_at(4096, rb, qed::io_handler(std::move(h))); });
    BOOST_REQUIRE(!rec);
    BOOST_CHECK_EQUAL(rn, back.size());
    BOOST_CHECK(back == data);

    std::string tail(16384, '\x55');
    boost::asio::mutable_buffer tb(tail.data(), tail.size());
    auto [tec, tn] = await<std::error_code, std::size_t>(ioc, [&](auto h) {
        f->async_read_at((4u << 20) - 8192, {&tb, 1}, qed::io_handler(std::move(h)));
    });
    BOOST_REQUIRE(!tec);
    BOOST_CHECK(tail == std::string(16384, '\0'));

    auto [fec] = await<std::error_code>(ioc, [&](auto h) { f->async_flush(qed::op_handler(std::move(h))); });
    BOOST_CHECK(!fec);

    // A hole reads as zeros.
    auto [pec] =
        await<std::error_code>(ioc, [&](auto h) { f->async_punch_hole(4096, 65536, qed::op_handler(std::move(h))); });
    BOOST_REQUIRE(!pec);
    auto [rec2, rn2] = await<std::error_code, std::size_t>(
        ioc, [&](auto h) { f->async_read_at(4096, rb, qed::io_handler(std::move(h))); });
    BOOST_REQUIRE(!rec2);
    BOOST_CHECK(back.substr(0, 65536) == std::string(65536, '\0'));
    BOOST_CHECK(back.substr(65536) == data.substr(65536));

    // Shrinking keeps the capacity; growing past it fails.
    auto [s1] = await<std::error_code>(ioc, [&](auto h) { f->async_resize(1u << 20, qed::op_handler(std::move(h))); });
    BOOST_CHECK(!s1);
    BOOST_CHECK_EQUAL(f->size(ec), 4u << 20);
    auto [s2] =
        await<std::error_code>(ioc, [&](auto h) { f->async_resize((4u << 20) + 512, qed::op_handler(std::move(h))); });
    BOOST_CHECK(s2 == std::error_code(ENOSPC, std::system_category()));
    std::string all;
    for (const auto& l : logs) all += l;
    BOOST_CHECK_MESSAGE(all.find(srv.uri()) != std::string::npos && all.find("end of the export") != std::string::npos,
                        all);
    // A write straddling the end: refused whole, nothing sent.
    boost::asio::const_buffer over(data.data(), 8192);
    auto [oec, on] = await<std::error_code, std::size_t>(ioc, [&](auto h) {
        f->async_write_at((4u << 20) - 4096, {&over, 1}, qed::io_handler(std::move(h)));
    });
    BOOST_CHECK(oec == std::error_code(ENOSPC, std::system_category()));

    // The connection is idle now: nothing keeps the io_context running.
    ioc.restart();
    ioc.run_for(2s);
    BOOST_CHECK(ioc.stopped());
}

// Many requests in flight at once, large and small: every reply is seen
// even when several arrive together (libnbd stops reading after each one
// and the reactor is edge-triggered -- this hung once).
BOOST_AUTO_TEST_CASE(many_requests_in_flight) {
    temp_dir dir("remote-qd");
    nbd_server srv(dir);
    srv.nbdkit("memory", {"size=512M"});
    const auto w = run(
        {tool("qed-img"), "bench", "-f", "raw", "-w", "-c", "256", "-d", "8", "-s", "1M", "--pattern=0x5a", srv.uri()},
        dir.path(), 120s);
    BOOST_REQUIRE_MESSAGE(w.status == 0, w.err);
    const auto r = run({tool("qed-img"), "bench", "-f", "raw", "-c", "20000", "-d", "32", "-s", "4k", srv.uri()},
                       dir.path(), 120s);
    BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
    NBD_RUN_OK(dir.path(), {"qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 0 256M", srv.uri()});
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "create", "-f", "qed", srv.uri(), "1G"});
    const auto q = run({tool("qed-img"), "bench", "-f", "qed", "-w", "-c", "4000", "-d", "32", "-s", "64k", srv.uri()},
                       dir.path(), 120s);
    BOOST_REQUIRE_MESSAGE(q.status == 0, q.err);
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "check", srv.uri()});
}

BOOST_AUTO_TEST_CASE(connection_errors_name_the_export) {
    temp_dir dir("remote-err");
    image_lib l;
    const std::string uri = "nbd+unix:///?socket=" + (dir / "nobody.sock");
    auto [ec, img] = l.open(uri);
    BOOST_CHECK(ec);
    BOOST_CHECK_MESSAGE(l.logged(uri), l.all_logs());

    // A read-only export refuses a read-write open, and serves a read-only one.
    nbd_server srv(dir);
    srv.nbdkit("memory", {"size=1M"}, false, true);
    auto [ec2, img2] = l.open(srv.uri());
    BOOST_CHECK(ec2 == std::error_code(EROFS, std::system_category()));
    BOOST_CHECK_MESSAGE(l.logged("read-only"), l.all_logs());
    auto img3 = l.must_open(srv.uri(), true);  // raw: all zeros
    BOOST_CHECK(l.read(img3, 0, 4096) == std::string(4096, '\0'));
    l.close(img3);

    // An export name the server doesn't have: QEMU's words, then what the
    // server said (libnbd passes that text on only as a debug message).
    const std::string raw = dir / "named.raw";
    NBD_RUN_OK(dir.path(), {"truncate", "-s", "1M", raw});
    nbd_server named(dir);
    named.qemu_nbd(raw);
    std::string wrong = named.uri();
    wrong.replace(wrong.find(":///") + 4, 0, "nosuch");
    auto [ec4, img4] = l.open(wrong, true);
    BOOST_CHECK(ec4 == std::error_code(ENOENT, std::system_category()));
    BOOST_CHECK_MESSAGE(l.logged("Requested export not available"), l.all_logs());
    BOOST_CHECK_MESSAGE(l.logged("server reported: export 'nosuch' not present"), l.all_logs());
}

// Create, write, read back, reopen, zero clusters: QED on nbdkit memory,
// and over TCP with an nbd:// name.
BOOST_AUTO_TEST_CASE(qed_on_nbdkit_memory) {
    for (const bool tcp : {false, true}) {
        BOOST_TEST_CONTEXT("tcp " << tcp) {
            temp_dir dir("remote-mem");
            nbd_server srv(dir);
            srv.nbdkit("memory", {"size=64M"}, tcp);
            image_lib l;
            BOOST_REQUIRE(!l.create(srv.uri(), 1ull << 30));
            const std::string a = random_bytes(200000, 1);  // spans clusters, unaligned end
            const std::string b = random_bytes(65536, 2);
            const std::string a_part = a.substr(0, 199680);  // 512-aligned length
            {
                auto img = l.must_open(srv.uri());
                BOOST_CHECK_EQUAL(img.info().backend, "nbd");
                BOOST_REQUIRE(!l.write(img, 1 << 20, a_part));
                BOOST_REQUIRE(!l.write(img, 700ull << 20, b));
                BOOST_CHECK(l.read(img, 1 << 20, a_part.size()) == a_part);
                l.close(img);
            }
            {
                auto img = l.must_open(srv.uri());
                BOOST_CHECK(l.read(img, 1 << 20, a_part.size()) == a_part);
                BOOST_CHECK(l.read(img, 700ull << 20, b.size()) == b);
                // New clusters go after the used ones, not past the export's end.
                const std::string c = random_bytes(131072, 3);
                BOOST_REQUIRE(!l.write(img, 5ull << 20, c));
                // Zeroing an allocated cluster (the export zeroes its bytes),
                // and unallocated ones (zero clusters in the tables).
                auto [zec] = await<std::error_code>(
                    l.ioc, [&](auto h) { img.async_write_zeroes(700ull << 20, 65536, std::move(h)); });
                BOOST_REQUIRE(!zec);
                BOOST_CHECK(l.read(img, 700ull << 20, 65536) == std::string(65536, '\0'));
                auto [zec2] = await<std::error_code>(
                    l.ioc, [&](auto h) { img.async_write_zeroes(800ull << 20, 1 << 20, std::move(h)); });
                BOOST_REQUIRE(!zec2);
                BOOST_CHECK(l.read(img, 800ull << 20, 1 << 20) == std::string(1 << 20, '\0'));
                auto [bec, ext] = await<std::error_code, std::vector<qed::extent>>(
                    l.ioc, [&](auto h) { img.async_block_status(800ull << 20, 1 << 20, std::move(h)); });
                BOOST_REQUIRE(!bec && !ext.empty());
                BOOST_CHECK_EQUAL(ext[0].length, 1u << 20);
                BOOST_CHECK_MESSAGE(ext[0].zero && !ext[0].data, "zero " << ext[0].zero << " data " << ext[0].data
                                                                         << " present " << ext[0].present << " len "
                                                                         << ext[0].length);
                l.require_clean(img);
                l.close(img);
            }
            auto img = l.must_open(srv.uri(), true);
            BOOST_CHECK(l.read(img, 5ull << 20, 131072) == random_bytes(131072, 3));
            BOOST_CHECK(l.read(img, 800ull << 20, 1 << 20) == std::string(1 << 20, '\0'));
            l.require_clean(img);
            l.close(img);
            // QEMU reads what we wrote (through its own NBD client).
            NBD_RUN_OK(dir.path(), {"qemu-io", "-r", "-f", "qed", "-c", "read -P 0 700M 64k", "-c", "read -P 0 800M 1M",
                                    "-c", "read -P 0 0 1M", srv.uri()});
        }
    }
}

// The export fills up: the allocation that does not fit fails with ENOSPC
// and one line naming the export; what was written before stays, and the
// image is consistent (no leaks, no corruption) when reopened.
BOOST_AUTO_TEST_CASE(export_full_enospc) {
    temp_dir dir("remote-full");
    nbd_server srv(dir);
    srv.nbdkit("memory", {"size=1M"});
    image_lib l;
    // 64 KiB header + 256 KiB L1 + one 256 KiB L2 table leave 7 data clusters.
    BOOST_REQUIRE(!l.create(srv.uri(), 64ull << 20));
    auto img = l.must_open(srv.uri());
    int written = 0;
    std::error_code ec;
    for (int i = 0; i < 20 && !ec; ++i) {
        ec = l.write(img, std::uint64_t(i) << 16, random_bytes(65536, 100 + i));
        if (!ec) ++written;
    }
    BOOST_CHECK_EQUAL(written, 7);
    BOOST_CHECK(ec == std::error_code(ENOSPC, std::system_category()));
    BOOST_CHECK_MESSAGE(l.logged(srv.uri()) && l.logged("end of the export"), l.all_logs());
    // Overwriting allocated clusters still works; the failed one reads zeros.
    BOOST_CHECK(!l.write(img, 0, random_bytes(65536, 99)));
    BOOST_CHECK(l.read(img, 7 << 16, 65536) == std::string(65536, '\0'));
    l.close(img);

    auto again = l.must_open(srv.uri());
    l.require_clean(again);
    BOOST_CHECK(l.read(again, 0, 65536) == random_bytes(65536, 99));
    for (int i = 1; i < 7; ++i)
        BOOST_CHECK(l.read(again, std::uint64_t(i) << 16, 65536) == random_bytes(65536, 100 + i));
    BOOST_CHECK(l.write(again, 9 << 16, random_bytes(512, 5)) == std::error_code(ENOSPC, std::system_category()));
    l.close(again);

    // The tools say the same in one line.
    const auto r = run({tool("qed-io"), "-c", "write -P 1 1M 64k", srv.uri()}, dir.path());
    BOOST_CHECK_NE(r.status, 0);
    BOOST_CHECK_MESSAGE(r.err.find(srv.uri()) != std::string::npos && r.err.find("no space left") != std::string::npos,
                        r.err);
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "check", srv.uri()});

    // An export too small for the L1 table: create fails, ENOSPC.
    nbd_server tiny(dir);
    tiny.nbdkit("memory", {"size=128K"});
    const auto tec = l.create(tiny.uri(), 64ull << 20);
    BOOST_CHECK_MESSAGE(tec == std::error_code(ENOSPC, std::system_category()), tec.message());
}

// A read-only golden image on one server (qemu-nbd -r), a local overlay on
// it; and the reverse, an overlay on an NBD export over a local base.
BOOST_AUTO_TEST_CASE(backing_chains) {
    temp_dir dir("remote-chain");
    image_lib l;
    const std::string golden = dir / "golden.qed";
    BOOST_REQUIRE(!l.create(golden, 16ull << 20));
    const std::string g = random_bytes(1 << 20, 11);
    {
        auto img = l.must_open(golden);
        BOOST_REQUIRE(!l.write(img, 0, g));
        l.close(img);
    }
    nbd_server gold(dir);
    gold.qemu_nbd(golden, "raw", true);
    const std::string overlay = dir / "overlay.qed";
    BOOST_REQUIRE(!l.create(overlay, 0, gold.uri()));  // size from the backing file
    {
        auto img = l.must_open(overlay);
        BOOST_CHECK_EQUAL(img.size(), 16ull << 20);
        BOOST_CHECK_EQUAL(img.info().backing_file, gold.uri());
        BOOST_REQUIRE(!l.write(img, 4096, std::string(4096, 'o')));
        std::string expect = g.substr(0, 65536);
        expect.replace(4096, 4096, std::string(4096, 'o'));
        BOOST_CHECK(l.read(img, 0, 65536) == expect);  // prefill came from the golden image
        BOOST_CHECK(l.read(img, 512 << 10, 65536) == g.substr(512 << 10, 65536));
        l.require_clean(img);
        l.close(img);
    }
    // QEMU follows the same chain.
    NBD_RUN_OK(dir.path(), {"qemu-io", "-r", "-c", "read -P 0x6f 4k 4k", overlay});
    {  // identical but for the 4 KiB the overlay wrote
        const auto r = run({"qemu-img", "compare", overlay, golden}, dir.path());
        BOOST_CHECK_EQUAL(r.status, 1);
    }
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "check", overlay});
    const auto info = NBD_RUN_OK(dir.path(), {tool("qed-img"), "info", overlay});
    BOOST_CHECK_MESSAGE(info.out.find(gold.uri()) != std::string::npos, info.out);

    // The reverse: the overlay lives on an export, its base is local.
    nbd_server ovl(dir);
    ovl.nbdkit("memory", {"size=32M"});
    const auto oec = l.create(ovl.uri(), 0, golden);
    BOOST_REQUIRE_MESSAGE(!oec, oec.message());
    {
        auto img = l.must_open(ovl.uri());
        BOOST_REQUIRE(!l.write(img, 1 << 20, std::string(65536, 'r')));
        BOOST_CHECK(l.read(img, 0, 65536) == g.substr(0, 65536));
        l.close(img);
    }
    auto img = l.must_open(ovl.uri(), true);
    BOOST_CHECK(l.read(img, 1 << 20, 65536) == std::string(65536, 'r'));
    l.require_clean(img);
    l.close(img);

    // A relative backing name can't be resolved against a URI.
    nbd_server rel(dir);
    rel.nbdkit("memory", {"size=32M"});
    BOOST_REQUIRE(!l.create(rel.uri(), 16ull << 20, "golden.qed"));
    auto [rec, rimg] = l.open(rel.uri());
    BOOST_CHECK(rec == qed::make_error_code(qed::errc::bad_backing_name));
    BOOST_CHECK_MESSAGE(l.logged("relative backing file name"), l.all_logs());

    // A chain that comes back to the same export is a loop.
    nbd_server loop(dir);
    loop.nbdkit("memory", {"size=32M"});
    BOOST_REQUIRE(!l.create(loop.uri(), 16ull << 20, loop.uri()));
    auto [lec, limg] = l.open(loop.uri());
    BOOST_CHECK(lec == qed::make_error_code(qed::errc::backing_loop));
}

// convert local -> nbd -> local with qed-img; qemu-img checks and compares.
BOOST_AUTO_TEST_CASE(convert_both_ways_and_check) {
    temp_dir dir("remote-conv");
    image_lib l;
    const std::string src = dir / "src.qed";
    BOOST_REQUIRE(!l.create(src, 32ull << 20));
    {
        auto img = l.must_open(src);
        BOOST_REQUIRE(!l.write(img, 0, random_bytes(300000 / 512 * 512, 21)));
        BOOST_REQUIRE(!l.write(img, 20ull << 20, random_bytes(1 << 20, 22)));
        l.close(img);
    }
    // nbdkit file over a file of a fixed size: the bytes land in a local
    // file we can hand to qemu-img afterwards.
    const std::string backing_store = dir / "export.img";
    NBD_RUN_OK(dir.path(), {"truncate", "-s", "16M", backing_store});
    nbd_server srv(dir);
    srv.nbdkit("file", {backing_store});
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "convert", "-O", "qed", src, srv.uri()});
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "compare", src, srv.uri()});
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "qed", "-F", "qed", src, srv.uri()});
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "check", srv.uri()});
    // QEMU counts the export's free space as leaked clusters (its QED
    // driver takes the export's size for the image's end), never corruption.
    const std::string json = qemu_check_json(dir, srv.uri());
    BOOST_CHECK_MESSAGE(
        json.find("\"check-errors\": 0") != std::string::npos && json.find("\"corruptions\"") == std::string::npos,
        json);

    const std::string back = dir / "back.qed";
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "convert", "-O", "qed", srv.uri(), back});
    NBD_RUN_OK(dir.path(), {"qemu-img", "check", back});
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", src, back});
    // Raw in both directions too.
    const std::string raw = dir / "back.raw";
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "convert", "-O", "raw", srv.uri(), raw});
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-F", "raw", src, raw});
}

// qemu-nbd serving a QED file as raw bytes: the export is exactly the file,
// so it is full at once; qed-io and qed-nbd work on it, qemu-img checks it.
BOOST_AUTO_TEST_CASE(qemu_nbd_export_and_qed_nbd_on_top) {
    temp_dir dir("remote-qnbd");
    const std::string file = dir / "disk.img";
    NBD_RUN_OK(dir.path(), {"truncate", "-s", "8M", file});
    nbd_server srv(dir);
    srv.qemu_nbd(file);
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "create", "-f", "qed", srv.uri(), "100M"});
    NBD_RUN_OK(dir.path(), {tool("qed-io"), "-c", "write -P 0xab 0 1M", "-c", "write -z 1M 1M", "-c",
                            "write -P 0xcd 50M 64k", srv.uri()});
    NBD_RUN_OK(dir.path(), {tool("qed-io"), "-r", "-c", "read -P 0xab 0 1M", "-c", "read -P 0 1M 1M", "-c",
                            "read -P 0xcd 50M 64k", srv.uri()});
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "check", srv.uri()});
    // QEMU reads the same through NBD.
    NBD_RUN_OK(dir.path(), {"qemu-io", "-r", "-f", "qed", "-c", "read -P 0xcd 50M 64k", srv.uri()});

    // qed-nbd serves the image that lives on the export; nbdcopy reads it.
    server front(dir);
    front.start({"-f", "qed"}, srv.uri(), true);
    const std::string out = dir / "copy.raw";
    NBD_RUN_OK(dir.path(), {"nbdcopy", front.uri(), out});
    const std::string copy = read_file(out);
    BOOST_REQUIRE_EQUAL(copy.size(), 100u << 20);
    BOOST_CHECK(copy.substr(0, 1 << 20) == std::string(1 << 20, '\xab'));
    BOOST_CHECK(copy.substr(50u << 20, 65536) == std::string(65536, '\xcd'));
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "raw", "-F", "qed", out, srv.uri()});
    BOOST_CHECK_EQUAL(front.stop(), 0);
    srv.stop();
    // The file behind the export: QEMU's check finds no corruption.
    const std::string json = qemu_check_json(dir, file);
    BOOST_CHECK_MESSAGE(
        json.find("\"check-errors\": 0") != std::string::npos && json.find("\"corruptions\"") == std::string::npos,
        json);
}

// ---- reconnection (QEMU's reconnect-delay) -----------------------------------

namespace {

std::string nbd_node(const std::string& socket, const std::string& extra) {
    return "json:{\"driver\": \"raw\", \"file\": {\"driver\": \"nbd\", \"server\": {\"type\": \"unix\", \"path\": \"" +
           socket + "\"}" + extra + "}}";
}

std::string file_bytes(const std::string& path, std::uint64_t off, std::size_t n) {
    std::ifstream in(path, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(off));
    std::string out(n, '\0');
    in.read(out.data(), static_cast<std::streamsize>(n));
    return out;
}

}  // namespace

// The server is killed with writes in flight and comes back within the
// delay: every write completes, once connected again, and the file holds
// exactly what was written; a lost and a re-established line are logged.
BOOST_AUTO_TEST_CASE(reconnect_within_the_delay_completes_requests) {
    temp_dir dir("remote-reconnect");
    const std::string raw = dir / "disk.raw";
    const std::string sock = dir / "nbd.sock";
    NBD_RUN_OK(dir.path(), {"truncate", "-s", "64M", raw});
    nbd_server srv(dir);
    srv.at_socket(sock);
    srv.qemu_nbd(raw);
    image_lib l;
    auto img = l.must_open(nbd_node(sock, ", \"reconnect-delay\": 20"));
    BOOST_REQUIRE(!l.write(img, 0, std::string(65536, 'a')));

    // 32 writes of 1 MiB each, all sent before the server goes.
    std::vector<std::string> data;
    for (int i = 0; i < 32; ++i) data.push_back(random_bytes(1 << 20, 100 + i));
    int done = 0;
    std::vector<std::error_code> results(data.size());
    for (std::size_t i = 0; i < data.size(); ++i) {
        img.async_write_at(i << 20, boost::asio::buffer(data[i]), [&, i](std::error_code ec, std::size_t) {
            results[i] = ec;
            ++done;
        });
    }
    l.ioc.restart();
    l.ioc.poll();  // the writes go out
    srv.stop();
    l.ioc.restart();
    l.ioc.run_for(500ms);  // lost: requests wait, attempts fail
    BOOST_CHECK(done < static_cast<int>(data.size()));
    srv.qemu_nbd(raw);
    const auto until = std::chrono::steady_clock::now() + 30s;
    while (done < static_cast<int>(data.size()) && std::chrono::steady_clock::now() < until) {
        l.ioc.restart();
        l.ioc.run_for(100ms);
    }
    BOOST_REQUIRE_EQUAL(done, static_cast<int>(data.size()));
    for (const auto& ec : results) BOOST_CHECK_MESSAGE(!ec, ec.message());
    // Reads after reconnection, then the bytes in the file itself.
    BOOST_CHECK(l.read(img, 5u << 20, 1 << 20) == data[5]);
    l.close(img);
    for (std::size_t i = 0; i < data.size(); ++i)
        BOOST_CHECK_MESSAGE(file_bytes(raw, i << 20, 1 << 20) == data[i], "MiB " << i);
    BOOST_CHECK_MESSAGE(l.logged("connection lost") && l.logged("connection re-established"), l.all_logs());
}

// A server that stays away: requests fail with EIO once reconnect-delay
// has passed (not before), and at once without a delay (the default).
BOOST_AUTO_TEST_CASE(server_away_fails_requests_after_the_delay) {
    temp_dir dir("remote-away");
    const std::string raw = dir / "disk.raw";
    const std::string sock = dir / "nbd.sock";
    NBD_RUN_OK(dir.path(), {"truncate", "-s", "16M", raw});
    for (const unsigned delay : {2u, 0u}) {
        BOOST_TEST_CONTEXT("reconnect-delay " << delay) {
            nbd_server srv(dir);
            srv.at_socket(sock);
            srv.qemu_nbd(raw);
            image_lib l;
            auto img =
                l.must_open(nbd_node(sock, delay ? ", \"reconnect-delay\": " + std::to_string(delay) : std::string()));
            BOOST_REQUIRE(!l.write(img, 0, std::string(4096, 'b')));
            srv.stop();
            const auto t0 = std::chrono::steady_clock::now();
            std::string buf(4096, '\0');
            auto [ec, n] = await<std::error_code, std::size_t>(l.ioc, [&](auto h) {
                img.async_read_at(0, boost::asio::buffer(buf.data(), buf.size()), std::move(h));
            });
            const auto took = std::chrono::steady_clock::now() - t0;
            BOOST_CHECK(ec == std::error_code(EIO, std::system_category()));
            if (delay) {
                BOOST_CHECK(took >= 1900ms);
                BOOST_CHECK(took < 10s);
                BOOST_CHECK_MESSAGE(l.logged("no connection within reconnect-delay=2"), l.all_logs());
            } else {
                BOOST_CHECK(took < 1s);
                BOOST_CHECK_MESSAGE(l.logged("connection lost"), l.all_logs());
            }
            auto [ec2, n2] = await<std::error_code, std::size_t>(l.ioc, [&](auto h) {
                img.async_read_at(4096, boost::asio::buffer(buf.data(), buf.size()), std::move(h));
            });
            BOOST_CHECK(ec2 == std::error_code(EIO, std::system_category()));
            auto [cec] = await<std::error_code>(l.ioc, [&](auto h) { img.async_close(std::move(h)); });
            (void)cec;  // a raw image opened read-write flushes at close: no server, no flush
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()
