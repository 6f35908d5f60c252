// SPDX-License-Identifier: BSL-1.0
// Images in Ceph: the librbd block file against a real single-node cluster
// (test/ceph/cluster.sh: one monitor, one manager, one memstore OSD, pool
// "rbd"), started once for this executable and stopped at its end; through
// the library, the tools (qed-img, qed-io, qed-nbd), nbdcopy and QEMU's own
// rbd driver where qemu-block-extra is installed.
#include <boost/asio/io_context.hpp>
#include <cerrno>

#include "qed/block_file.hpp"
#include "test_nbd_support.hpp"

#ifndef QED_CEPH_CLUSTER_SCRIPT
#define QED_CEPH_CLUSTER_SCRIPT ""
#endif

using namespace nbdtest;

namespace {

std::string tool(const std::string& name) {
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    return (self.parent_path().parent_path() / "src" / "tools" / name).string();
}

bool have_ceph() {
    return have("ceph-mon") && have("ceph-osd") && have("ceph-mgr") && have("rbd");
}

/// The cluster for the whole executable.
struct cluster {
    std::unique_ptr<temp_dir> dir;
    std::string conf;
    bool up = false;
    std::string why;

    cluster() {
        if (!have_ceph()) {
            why = "ceph-mon, ceph-osd, ceph-mgr or rbd not installed";
            return;
        }
        dir = std::make_unique<temp_dir>("ceph");
        const auto r = run({"bash", QED_CEPH_CLUSTER_SCRIPT, "start", dir->path().string()}, dir->path(), 180s);
        if (r.status != 0) {
            why = "the cluster did not start: " + r.err;
            return;
        }
        conf = (dir->path() / "ceph.conf").string();
        up = true;
    }
    ~cluster() {
        if (dir) run({"bash", QED_CEPH_CLUSTER_SCRIPT, "stop", dir->path().string()}, dir->path(), 60s);
    }
    static cluster& get() {
        static cluster c;
        return c;
    }
    /// rbd:rbd/NAME:conf=...
    std::string name(const std::string& image) const { return "rbd:rbd/" + image + ":conf=" + conf; }
};

boost::test_tools::assertion_result cluster_up(boost::unit_test::test_unit_id) {
    boost::test_tools::assertion_result r(cluster::get().up);
    if (!r) r.message() << cluster::get().why;
    return r;
}

bool qemu_has_rbd() {
    static const bool ok = [] {
        temp_dir d("rbd-probe");
        const auto r = run({"qemu-img", "--help"}, d.path());
        return r.out.find(" rbd") != std::string::npos;
    }();
    return ok;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(remote_rbd, *boost::unit_test::precondition(cluster_up))

// The block file: grows on writes past the end and on resize, reads zeros
// past the end, scatter-gather, flush, write-zeroes.
BOOST_AUTO_TEST_CASE(block_file_on_rbd) {
    const cluster& c = cluster::get();
    boost::asio::io_context ioc;
    qed::file_options fo;
    fo.read_only = false;
    fo.create = true;
    std::error_code ec;
    auto f = qed::open_file(ioc.get_executor(), c.name("bf"), fo, ec);
    BOOST_REQUIRE_MESSAGE(f, ec.message());
    BOOST_CHECK(qed::is_remote_name(c.name("bf")));
    BOOST_CHECK(!f->fixed_size());
    BOOST_CHECK_EQUAL(std::string(f->backend_name()), "rbd");
    BOOST_CHECK_EQUAL(f->size(ec), 0u);

    const std::string data = random_bytes(3 * 65536 + 512, 5);
    std::vector<boost::asio::const_buffer> wb{{data.data(), 512}, {data.data() + 512, data.size() - 512}};
    auto [wec, wn] = await<std::error_code, std::size_t>(
        ioc, [&](auto h) { f->async_write_at(1 << 20, wb, qed::io_handler(std::move(h))); });
    BOOST_REQUIRE_MESSAGE(!wec, wec.message());
    BOOST_CHECK_EQUAL(f->size(ec), (1u << 20) + data.size());  // grown exactly to the end of the write

    std::string back(data.size() + 8192, '\x55');
    std::vector<boost::asio::mutable_buffer> rb{{back.data(), 4096}, {back.data() + 4096, back.size() - 4096}};
    auto [rec, rn] = await<std::error_code, std::size_t>(
        ioc, [&](auto h) { f->async_read_at(1 << 20, rb, qed::io_handler(std::move(h))); });
    BOOST_REQUIRE(!rec);
    BOOST_CHECK_EQUAL(rn, back.size());
    BOOST_CHECK(back.substr(0, data.size()) == data);
    BOOST_CHECK(back.substr(data.size()) == std::string(8192, '\0'));  // past the end

    auto [fec] = await<std::error_code>(ioc, [&](auto h) { f->async_flush(qed::op_handler(std::move(h))); });
    BOOST_CHECK(!fec);
    auto [pec] = await<std::error_code>(
        ioc, [&](auto h) { f->async_punch_hole((1 << 20) + 65536, 65536, qed::op_handler(std::move(h))); });
    BOOST_REQUIRE(!pec);
    auto [rec2, rn2] = await<std::error_code, std::size_t>(
        ioc, [&](auto h) { f->async_read_at(1 << 20, rb, qed::io_handler(std::move(h))); });
    BOOST_REQUIRE(!rec2);
    BOOST_CHECK(back.substr(65536, 65536) == std::string(65536, '\0'));
    BOOST_CHECK(back.substr(0, 65536) == data.substr(0, 65536));

    auto [sec] = await<std::error_code>(ioc, [&](auto h) { f->async_resize(64 << 20, qed::op_handler(std::move(h))); });
    BOOST_REQUIRE(!sec);
    BOOST_CHECK_EQUAL(f->size(ec), 64u << 20);
    auto [sec2] = await<std::error_code>(ioc, [&](auto h) { f->async_resize(4096, qed::op_handler(std::move(h))); });
    BOOST_REQUIRE(!sec2);
    BOOST_CHECK_EQUAL(f->size(ec), 4096u);
}

BOOST_AUTO_TEST_CASE(errors_name_the_image) {
    const cluster& c = cluster::get();
    image_lib l;
    auto [ec, img] = l.open("rbd:nosuchpool/x:conf=" + c.conf);
    BOOST_CHECK(ec == std::error_code(ENOENT, std::system_category()));
    BOOST_CHECK_MESSAGE(l.all_logs().find("cannot open pool nosuchpool") != std::string::npos, l.all_logs());
    auto [ec2, img2] = l.open(c.name("never-created"));
    BOOST_CHECK(ec2 == std::error_code(ENOENT, std::system_category()));
    auto [ec3, img3] = l.open("rbd:justapool");
    BOOST_CHECK(ec3 == std::error_code(EINVAL, std::system_category()));
    BOOST_CHECK_MESSAGE(l.all_logs().find("rbd:justapool: expected rbd:POOL/IMAGE") != std::string::npos, l.all_logs());
}

// qed-img create makes the RBD image; write, read back, zero clusters,
// reopen, check -- and the image grows as clusters are allocated.
BOOST_AUTO_TEST_CASE(qed_on_rbd) {
    const cluster& c = cluster::get();
    temp_dir dir("rbd-qed");
    const std::string name = c.name("disk1");
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "create", "-f", "qed", name, "100G"});
    const auto info = NBD_RUN_OK(dir.path(), {"rbd", "-c", c.conf, "info", "rbd/disk1"});
    image_lib l;
    std::uint64_t size_before = 0;
    {
        auto img = l.must_open(name);
        BOOST_CHECK_EQUAL(img.info().backend, "rbd");
        BOOST_CHECK_EQUAL(img.size(), 100ull << 30);
        size_before = img.info().file_size;
        BOOST_REQUIRE(!l.write(img, 0, random_bytes(1 << 20, 1)));
        BOOST_REQUIRE(!l.write(img, 50ull << 30, random_bytes(65536, 2)));
        auto [zec] =
            await<std::error_code>(l.ioc, [&](auto h) { img.async_write_zeroes(10ull << 30, 1 << 20, std::move(h)); });
        BOOST_REQUIRE(!zec);
        BOOST_CHECK_GT(img.info().file_size, size_before + (1u << 20));
        l.close(img);
    }
    auto img = l.must_open(name, true);
    BOOST_CHECK(l.read(img, 0, 1 << 20) == random_bytes(1 << 20, 1));
    BOOST_CHECK(l.read(img, 50ull << 30, 65536) == random_bytes(65536, 2));
    BOOST_CHECK(l.read(img, 10ull << 30, 1 << 20) == std::string(1 << 20, '\0'));
    l.require_clean(img);
    l.close(img);
    NBD_RUN_OK(dir.path(), {tool("qed-io"), "-c", "write -P 0x5a 2M 128k", "-c", "read -P 0x5a 2M 128k", name});
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "check", name});
    if (qemu_has_rbd()) {
        NBD_RUN_OK(dir.path(), {"qemu-img", "check", "-f", "qed", name});
        NBD_RUN_OK(dir.path(),
                   {"qemu-io", "-r", "-f", "qed", "-c", "read -P 0x5a 2M 128k", "-c", "read -P 0 10G 1M", name});
    }
}

// A local overlay over a base image in Ceph, and an overlay in Ceph over a
// local base.
BOOST_AUTO_TEST_CASE(backing_chains) {
    const cluster& c = cluster::get();
    temp_dir dir("rbd-chain");
    image_lib l;
    const std::string base = c.name("base");
    BOOST_REQUIRE(!l.create(base, 16ull << 20));
    const std::string g = random_bytes(1 << 20, 11);
    {
        auto img = l.must_open(base);
        BOOST_REQUIRE(!l.write(img, 0, g));
        l.close(img);
    }
    const std::string overlay = dir / "overlay.qed";
    BOOST_REQUIRE(!l.create(overlay, 0, base));
    {
        auto img = l.must_open(overlay);
        BOOST_CHECK_EQUAL(img.size(), 16ull << 20);
        BOOST_REQUIRE(!l.write(img, 4096, std::string(4096, 'o')));
        std::string expect = g.substr(0, 65536);
        expect.replace(4096, 4096, std::string(4096, 'o'));
        BOOST_CHECK(l.read(img, 0, 65536) == expect);
        l.require_clean(img);
        l.close(img);
    }
    if (qemu_has_rbd()) NBD_RUN_OK(dir.path(), {"qemu-io", "-r", "-c", "read -P 0x6f 4k 4k", overlay});

    const std::string local_base = dir / "base.qed";
    BOOST_REQUIRE(!l.create(local_base, 16ull << 20));
    {
        auto img = l.must_open(local_base);
        BOOST_REQUIRE(!l.write(img, 0, g));
        l.close(img);
    }
    const std::string upper = c.name("upper");
    BOOST_REQUIRE(!l.create(upper, 0, local_base));
    {
        auto img = l.must_open(upper);
        BOOST_REQUIRE(!l.write(img, 1 << 20, std::string(65536, 'r')));
        BOOST_CHECK(l.read(img, 0, 65536) == g.substr(0, 65536));
        l.close(img);
    }
    auto img = l.must_open(upper, true);
    BOOST_CHECK(l.read(img, 1 << 20, 65536) == std::string(65536, 'r'));
    BOOST_CHECK(l.read(img, 65536, 65536) == g.substr(65536, 65536));
    l.require_clean(img);
    l.close(img);
}

// convert local -> rbd -> local; qed-nbd serves an image in Ceph to
// qemu-img and nbdcopy.
BOOST_AUTO_TEST_CASE(convert_and_serve) {
    const cluster& c = cluster::get();
    temp_dir dir("rbd-conv");
    image_lib l;
    const std::string src = dir / "src.qed";
    BOOST_REQUIRE(!l.create(src, 32ull << 20));
    {
        auto img = l.must_open(src);
        BOOST_REQUIRE(!l.write(img, 0, random_bytes(300 << 10, 21)));
        BOOST_REQUIRE(!l.write(img, 20ull << 20, random_bytes(1 << 20, 22)));
        l.close(img);
    }
    const std::string remote = c.name("converted");
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "convert", "-O", "qed", src, remote});
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "compare", src, remote});
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "check", remote});
    const std::string back = dir / "back.qed";
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "convert", "-O", "qed", remote, back});
    NBD_RUN_OK(dir.path(), {"qemu-img", "check", back});
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", src, back});
    if (qemu_has_rbd()) NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "qed", "-F", "qed", src, remote});

    server front(dir);
    front.start({"-t", "-f", "qed"}, remote, true);
    const std::string out = dir / "copy.raw";
    NBD_RUN_OK(dir.path(), {"nbdcopy", front.uri(), out});
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "raw", "-F", "qed", out, src});
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "raw", "-F", "qed", front.uri(), src});
    BOOST_CHECK_EQUAL(front.stop(), 0);
}

BOOST_AUTO_TEST_SUITE_END()
