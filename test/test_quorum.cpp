// SPDX-License-Identifier: BSL-1.0
// QEMU's quorum as a block file: reads voted on over children that agree,
// differ or fail, with vote-threshold 1, 2 and 3; writes, flushes and
// write-zeroes to every child; read-pattern=fifo; rewrite-corrupted;
// blkverify; the options and children refused. Then a quorum as the file of
// a QED image opened by a json: name, and its backing file name, which has
// no directory to be resolved in (QEMU: "cannot determine actual path").
#include <boost/asio/io_context.hpp>
#include <boost/test/unit_test.hpp>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "block_file/quorum_file.hpp"
#include "qed/error.hpp"
#include "qed/image.hpp"
#include "support/fault_file.hpp"
#include "support/sync.hpp"
#include "support/tmp_dir.hpp"

namespace asio = boost::asio;
using namespace qed;
using qed::test::await;

namespace {

constexpr std::uint64_t size = 1 << 20;

struct child {
    std::shared_ptr<memory_storage> storage = std::make_shared<memory_storage>();
    std::shared_ptr<test::fault_plan> plan = std::make_shared<test::fault_plan>();

    explicit child(char fill) {
        storage->resize(size);
        std::vector<std::byte> bytes(size, std::byte(fill));
        storage->write(0, bytes);
    }
    /// Fail every request of `k` from now on.
    void fail(test::fault_plan::kind k, int e = EIO) {
        plan->fail_at[k] = 0;
        plan->count[k] = 0;
        plan->persistent = true;
        plan->error = std::error_code(e, std::system_category());
    }
    char at(std::uint64_t offset) const {
        std::byte b{};
        storage->read(offset, {&b, 1});
        return static_cast<char>(b);
    }
};

struct fixture {
    asio::io_context ioc;
    std::vector<std::string> log;

    std::shared_ptr<block_file> quorum(std::vector<child*> children, unsigned threshold, std::string& why,
                                       bool fifo = false, bool rewrite = false, bool blkverify = false,
                                       bool read_only = false) {
        std::vector<std::shared_ptr<block_file>> files;
        detail::quorum_options o;
        o.threshold = threshold;
        o.fifo = fifo;
        o.rewrite_corrupted = rewrite;
        o.blkverify = blkverify;
        for (auto* c : children) {
            files.push_back(std::make_shared<test::fault_file>(
                make_memory_file(ioc.get_executor(), c->storage, read_only), c->plan));
            o.names.push_back("c" + std::to_string(o.names.size()));
        }
        o.log = [this](std::string_view line) { log.emplace_back(line); };
        return detail::make_quorum_file(std::move(files), std::move(o), why);
    }
    std::shared_ptr<block_file> quorum(std::vector<child*> children, unsigned threshold) {
        std::string why;
        auto q = quorum(std::move(children), threshold, why);
        BOOST_TEST_REQUIRE(q != nullptr, why);
        return q;
    }

    std::pair<std::error_code, std::vector<char>> read(block_file& f, std::uint64_t offset, std::size_t n) {
        std::vector<char> out(n, '?');
        // Two buffer descriptors: the winner is copied across both.
        const std::size_t half = n / 2;
        const asio::mutable_buffer bufs[2] = {{out.data(), half}, {out.data() + half, n - half}};
        auto [ec, got] = await<std::error_code, std::size_t>(
            ioc, [&](auto h) { f.async_read_at(offset, bufs, io_handler(std::move(h))); });
        if (!ec) BOOST_TEST(got == n);
        return {ec, out};
    }
    std::error_code write(block_file& f, std::uint64_t offset, std::size_t n, char fill) {
        std::vector<char> in(n, fill);
        const asio::const_buffer b(in.data(), n);
        auto [ec, put] = await<std::error_code, std::size_t>(ioc, [&](auto h) {
            f.async_write_at(offset, {&b, 1}, io_handler(std::move(h)));
        });
        if (!ec) BOOST_TEST(put == n);
        return ec;
    }
    std::error_code flush(block_file& f) {
        return std::get<0>(await<std::error_code>(ioc, [&](auto h) { f.async_flush(op_handler(std::move(h))); }));
    }
    std::error_code punch(block_file& f, std::uint64_t offset, std::uint64_t n) {
        return std::get<0>(
            await<std::error_code>(ioc, [&](auto h) { f.async_punch_hole(offset, n, op_handler(std::move(h))); }));
    }
};

bool all(const std::vector<char>& v, char c) {
    return std::all_of(v.begin(), v.end(), [c](char x) { return x == c; });
}

}  // namespace

BOOST_AUTO_TEST_SUITE(quorum)

BOOST_FIXTURE_TEST_CASE(agreeing_children_read_at_every_threshold, fixture) {
    child a('a'), b('a'), c('a');
    for (unsigned t : {1u, 2u, 3u}) {
        auto q = quorum({&a, &b, &c}, t);
        BOOST_TEST(q->backend_name() == std::string("quorum"));
        std::error_code ec;
        BOOST_TEST(q->size(ec) == size);
        BOOST_TEST(!ec);
        auto [rec, data] = read(*q, 4096, 8192);
        BOOST_TEST(!rec, rec.message());
        BOOST_TEST(all(data, 'a'));
    }
    BOOST_TEST(log.empty());
}

// Children a, a, b: the majority wins while it has vote-threshold copies.
BOOST_FIXTURE_TEST_CASE(a_child_that_differs_is_outvoted_up_to_the_threshold, fixture) {
    child a('a'), b('a'), c('b');
    for (unsigned t : {1u, 2u}) {
        auto q = quorum({&a, &b, &c}, t);
        auto [ec, data] = read(*q, 0, 4096);
        BOOST_TEST(!ec, "threshold " << t << ": " << ec.message());
        BOOST_TEST(all(data, 'a'), "threshold " << t);
    }
    BOOST_TEST(log.empty());  // the quorum answered: nothing to report
    auto q = quorum({&a, &b, &c}, 3);
    auto [ec, data] = read(*q, 0, 4096);
    BOOST_TEST(ec == std::error_code(EIO, std::system_category()));
    BOOST_TEST(all(data, '?'));  // nothing handed out
    BOOST_TEST_REQUIRE(log.size() == 1u);
    BOOST_TEST(log[0].find("quorum (c0, c1, c2): read of 4096 bytes at offset 0") == 0u, log[0]);
    BOOST_TEST(log[0].find("vote-threshold 3") != std::string::npos, log[0]);
    // Where the children agree (the differing byte is elsewhere) all three do.
    c.storage->write(0, std::vector<std::byte>(4096, std::byte('a')));
    auto [ec2, data2] = read(*q, 0, 4096);
    BOOST_TEST(!ec2);
    BOOST_TEST(all(data2, 'a'));
}

// Two versions with one copy each: QEMU takes the one read from the later
// child (its vote list is newest first).
BOOST_FIXTURE_TEST_CASE(a_tie_goes_to_the_later_child_as_in_qemu, fixture) {
    child a('a'), b('b');
    auto ab = quorum({&a, &b}, 1);
    BOOST_TEST(all(read(*ab, 0, 512).second, 'b'));
    auto ba = quorum({&b, &a}, 1);
    BOOST_TEST(all(read(*ba, 0, 512).second, 'a'));
    auto strict = quorum({&a, &b}, 2);
    BOOST_TEST(read(*strict, 0, 512).first == std::error_code(EIO, std::system_category()));
}

BOOST_FIXTURE_TEST_CASE(a_child_that_fails_reads, fixture) {
    child a('a'), b('a'), c('a');
    c.fail(test::fault_plan::read, ENOSPC);
    for (unsigned t : {1u, 2u}) {
        auto q = quorum({&a, &b, &c}, t);
        auto [ec, data] = read(*q, 0, 4096);
        BOOST_TEST(!ec, "threshold " << t);
        BOOST_TEST(all(data, 'a'));
    }
    BOOST_TEST(log.empty());
    auto q = quorum({&a, &b, &c}, 3);
    // Too few children answered: the error the failed ones gave.
    BOOST_TEST(read(*q, 0, 4096).first == std::error_code(ENOSPC, std::system_category()));
    BOOST_TEST_REQUIRE(log.size() == 1u);
    BOOST_TEST(log[0].find("2 of 3 children succeeded, vote-threshold 3") != std::string::npos, log[0]);
    // Two failing children, threshold 1: the one left decides alone.
    b.fail(test::fault_plan::read);
    auto one = quorum({&a, &b, &c}, 1);
    BOOST_TEST(all(read(*one, 0, 512).second, 'a'));
    // All three failing: the error most of them gave (EIO twice, ENOSPC once).
    a.fail(test::fault_plan::read);
    BOOST_TEST(read(*one, 0, 512).first == std::error_code(EIO, std::system_category()));
}

BOOST_FIXTURE_TEST_CASE(writes_flushes_and_zeroes_reach_every_child, fixture) {
    child a('a'), b('a'), c('a');
    auto q = quorum({&a, &b, &c}, 3);
    BOOST_TEST(!write(*q, 8192, 4096, 'w'));
    BOOST_TEST(!flush(*q));
    for (auto* x : {&a, &b, &c}) BOOST_TEST(x->at(8192) == 'w');
    BOOST_TEST(!punch(*q, 65536, 65536));
    for (auto* x : {&a, &b, &c}) BOOST_TEST(x->at(65536 + 100) == 0);
    BOOST_TEST(all(read(*q, 65536, 65536).second, 0));
    // A failing child: enough for threshold 2, not for 3.
    c.fail(test::fault_plan::write, ENOSPC);
    c.fail(test::fault_plan::flush, ENOSPC);
    auto two = quorum({&a, &b, &c}, 2);
    BOOST_TEST(!write(*two, 0, 512, 'x'));
    BOOST_TEST(!flush(*two));
    BOOST_TEST(a.at(0) == 'x');
    BOOST_TEST(b.at(0) == 'x');
    BOOST_TEST(c.at(0) == 'a');  // c missed it
    BOOST_TEST(log.empty());
    BOOST_TEST(write(*q, 0, 512, 'y') == std::error_code(ENOSPC, std::system_category()));
    BOOST_TEST(flush(*q) == std::error_code(ENOSPC, std::system_category()));
    BOOST_TEST_REQUIRE(log.size() == 2u);
    BOOST_TEST(log[0].find("quorum (c0, c1, c2): write of 512 bytes at offset 0: 2 of 3 children succeeded") == 0u,
               log[0]);
    BOOST_TEST(log[1].find("flush") != std::string::npos, log[1]);
    // The write still reached the healthy children (QEMU does the same).
    BOOST_TEST(a.at(0) == 'y');
}

BOOST_FIXTURE_TEST_CASE(fifo_reads_the_first_child_that_answers, fixture) {
    child a('a'), b('b'), c('c');
    std::string why;
    auto q = quorum({&a, &b, &c}, 1, why, /*fifo=*/true);
    BOOST_TEST_REQUIRE(q != nullptr, why);
    BOOST_TEST(all(read(*q, 0, 4096).second, 'a'));  // no vote: the first child's data
    a.fail(test::fault_plan::read);
    BOOST_TEST(all(read(*q, 0, 4096).second, 'b'));
    b.fail(test::fault_plan::read);
    c.fail(test::fault_plan::read, ENOSPC);
    BOOST_TEST(read(*q, 0, 4096).first == std::error_code(ENOSPC, std::system_category()));  // the last one's
    BOOST_TEST_REQUIRE(log.size() == 1u);
    BOOST_TEST(log[0].find("every child failed") != std::string::npos, log[0]);
}

BOOST_FIXTURE_TEST_CASE(rewrite_corrupted_puts_the_winner_back, fixture) {
    child a('a'), b('a'), c('b');
    std::string why;
    auto q = quorum({&a, &b, &c}, 2, why, false, /*rewrite=*/true);
    BOOST_TEST_REQUIRE(q != nullptr, why);
    BOOST_TEST(c.at(1000) == 'b');
    auto [ec, data] = read(*q, 0, 4096);
    BOOST_TEST(!ec);
    BOOST_TEST(all(data, 'a'));
    BOOST_TEST(c.at(1000) == 'a');  // rewritten in the range read
    BOOST_TEST(c.at(5000) == 'b');  // and only there
    BOOST_TEST(read(*q, 4096, 4096).first == std::error_code{});
    BOOST_TEST(c.at(5000) == 'a');
    // Without a winner nothing is rewritten.
    child x('x'), y('y'), z('z');
    auto none = quorum({&x, &y, &z}, 2, why, false, true);
    BOOST_TEST(read(*none, 0, 512).first == std::error_code(EIO, std::system_category()));
    BOOST_TEST(x.at(0) == 'x');
    BOOST_TEST(y.at(0) == 'y');
}

BOOST_FIXTURE_TEST_CASE(blkverify_names_the_first_differing_byte, fixture) {
    child a('a'), b('a');
    b.storage->write(1234, std::vector<std::byte>(1, std::byte('z')));
    std::string why;
    auto q = quorum({&a, &b}, 2, why, false, false, /*blkverify=*/true);
    BOOST_TEST_REQUIRE(q != nullptr, why);
    BOOST_TEST(!read(*q, 0, 1024).first);
    BOOST_TEST(read(*q, 1024, 1024).first == std::error_code(EIO, std::system_category()));
    BOOST_TEST_REQUIRE(log.size() == 1u);
    BOOST_TEST(log[0] == "quorum: offset=1024 bytes=1024 contents mismatch at offset 1234");
}

BOOST_FIXTURE_TEST_CASE(options_that_do_not_fit_are_refused, fixture) {
    child a('a'), b('a'), c('a');
    std::string why;
    BOOST_TEST(quorum({&a, &b}, 0, why) == nullptr);
    BOOST_TEST(why == "Parameter 'vote-threshold' expects a value >= 1");
    BOOST_TEST(quorum({&a, &b}, 3, why) == nullptr);
    BOOST_TEST(why == "threshold may not exceed children count");
    BOOST_TEST(quorum({}, 1, why) == nullptr);
    BOOST_TEST(why == "Number of provided children must be 1 or more");
    BOOST_TEST(quorum({&a, &b, &c}, 2, why, false, false, true) == nullptr);
    BOOST_TEST(why.find("blkverify=on can only be set if there are exactly two files") == 0u, why);
    BOOST_TEST(quorum({&a, &b}, 2, why, false, true, true) == nullptr);
    BOOST_TEST(why == "rewrite-corrupted=on cannot be used with blkverify=on");
    BOOST_TEST(quorum({&a, &b}, 1, why, false, true, false, /*read_only=*/true) == nullptr);
    BOOST_TEST(why.find("Block node is read-only") == 0u, why);
    c.storage->resize(size * 2);
    BOOST_TEST(quorum({&a, &b, &c}, 1, why) == nullptr);
    BOOST_TEST(why ==
                   "Could not refresh total sector count: the quorum's children differ in size (c0: 1048576 bytes, c1: "
                   "1048576 bytes, c2: 2097152 bytes)",
               why);
    // A child that grows afterwards makes the size an error, as in QEMU.
    c.storage->resize(size);
    auto q = quorum({&a, &b, &c}, 1);
    c.storage->resize(size + 512);
    std::error_code ec;
    q->size(ec);
    BOOST_TEST(ec == std::error_code(EIO, std::system_category()));
}

// A QED image on a quorum of two copies, by its json: name: it reads and
// writes through the quorum; its relative backing file name has no
// directory to be resolved in, so info says so and a full open fails in
// QEMU's words.
BOOST_AUTO_TEST_CASE(a_qed_image_on_a_quorum_by_its_json_name) {
    test::tmp_dir dir;
    asio::io_context ioc;
    create_options base;
    base.size = size;
    BOOST_TEST_REQUIRE(!test::create(ioc, (dir / "base.qed"), base));
    create_options top;
    top.backing_file = "base.qed";
    top.backing_format = image_format::qed;
    BOOST_TEST_REQUIRE(!test::create(ioc, (dir / "a.qed"), top));
    std::filesystem::copy_file((dir / "a.qed"), (dir / "b.qed"));
    const std::string name =
        "json:{'driver': 'qed', 'file': {'driver': 'quorum', 'vote-threshold': 2, 'children': "
        "[{'driver': 'file', 'filename': '" +
        (dir / "a.qed") + "'}, {'driver': 'file', 'filename': '" + (dir / "b.qed") + "'}]}}";
    std::vector<std::string> log;
    open_options o;
    o.log = [&log](std::string_view l) { log.emplace_back(l); };
    o.open_backing = false;
    {
        auto [ec, img] = await<std::error_code, image>(
            ioc, [&](auto h) { image::async_open(ioc.get_executor(), name, o, std::move(h)); });
        BOOST_TEST_REQUIRE(!ec, ec.message());
        const image_info i = img.info();
        BOOST_TEST(i.backing_file == "base.qed");
        BOOST_TEST(i.backing_file_full.empty());  // cannot determine actual path
        BOOST_TEST(i.filename.find(R"("children": [{"driver": "file", "filename": ")") != std::string::npos,
                   i.filename);
        test::sync_image s{ioc, img};
        std::vector<char> data(65536, 'q');
        BOOST_TEST(!s.write(0, data.data(), data.size()));
        std::vector<char> back(65536);
        BOOST_TEST(!s.read(0, back.data(), back.size()));
        BOOST_TEST(back == data);
        BOOST_TEST(!s.close());
    }
    // Both copies hold the write: each opens on its own and reads it.
    for (const char* copy : {"a.qed", "b.qed"}) {
        open_options plain;
        plain.open_backing = false;
        auto [ec, img] = await<std::error_code, image>(
            ioc, [&](auto h) { image::async_open(ioc.get_executor(), (dir / copy), plain, std::move(h)); });
        BOOST_TEST_REQUIRE(!ec, copy);
        test::sync_image s{ioc, img};
        std::vector<char> back(65536);
        BOOST_TEST(!s.read(0, back.data(), back.size()));
        BOOST_TEST(back[100] == 'q', copy);
        BOOST_TEST(!s.close());
    }
    log.clear();
    o.open_backing = true;
    auto [ec, img] = await<std::error_code, image>(
        ioc, [&](auto h) { image::async_open(ioc.get_executor(), name, o, std::move(h)); });
    BOOST_TEST(ec);
    BOOST_TEST_REQUIRE(!log.empty());
    BOOST_TEST(log.back().find(": Cannot generate a base directory for quorum nodes") != std::string::npos, log.back());
    // Over blkdebug the image below has a directory: the backing file resolves.
    const std::string over_blkdebug =
        "json:{'driver': 'qed', 'file': {'driver': 'blkdebug', 'image': {'driver': "
        "'file', 'filename': '" +
        (dir / "a.qed") + "'}}}";
    auto [ec2, img2] = await<std::error_code, image>(
        ioc, [&](auto h) { image::async_open(ioc.get_executor(), over_blkdebug, o, std::move(h)); });
    BOOST_TEST_REQUIRE(!ec2, ec2.message());
    BOOST_TEST(img2.info().backing_file_full == (dir / "base.qed"));
    test::sync_image s2{ioc, img2};
    BOOST_TEST(!s2.close());
}

BOOST_AUTO_TEST_SUITE_END()
