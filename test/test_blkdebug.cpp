// SPDX-License-Identifier: BSL-1.0
// The blkdebug layer (QEMU's fault injection) and the null-co file: rules
// files, event-driven activation, state machine, once, sector, iotype,
// alignment, and the image layer's events reaching the file.
#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/test/unit_test.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "qed/blkdebug.hpp"
#include "qed/block_file.hpp"
#include "qed/error.hpp"
#include "qed/image.hpp"
#include "support/sync.hpp"
#include "support/tmp_dir.hpp"

namespace asio = boost::asio;
using namespace qed;
using qed::test::await;

namespace {

struct fixture {
    asio::io_context ioc;
    test::tmp_dir dir{"blkdebug"};

    std::string write_file(const std::string& name, const std::string& text) {
        const std::string p = dir.path() + "/" + name;
        std::ofstream(p) << text;
        return p;
    }

    std::error_code read(block_file& f, std::uint64_t off, void* p, std::size_t n) {
        asio::mutable_buffer b(p, n);
        return std::get<0>(await<std::error_code, std::size_t>(ioc, [&](auto h) {
            f.async_read_at(off, {&b, 1}, io_handler(std::move(h)));
        }));
    }
    std::error_code write(block_file& f, std::uint64_t off, const void* p, std::size_t n) {
        asio::const_buffer b(p, n);
        return std::get<0>(await<std::error_code, std::size_t>(ioc, [&](auto h) {
            f.async_write_at(off, {&b, 1}, io_handler(std::move(h)));
        }));
    }
    std::error_code flush(block_file& f) {
        return std::get<0>(await<std::error_code>(ioc, [&](auto h) { f.async_flush(op_handler(std::move(h))); }));
    }
};

std::error_code eio() {
    return {EIO, std::system_category()};
}

}  // namespace

BOOST_FIXTURE_TEST_SUITE(blkdebug, fixture)

BOOST_AUTO_TEST_CASE(names_parse_as_qemu_reads_them) {
    blkdebug_config c;
    std::string error;
    BOOST_TEST(!parse_blkdebug_name("blkdebug:rules.cfg:dir/img.qed", c, error));
    BOOST_TEST(c.config_file == "rules.cfg");
    BOOST_TEST(c.image == "dir/img.qed");
    blkdebug_config d;
    BOOST_TEST(!parse_blkdebug_name("blkdebug::nbd://host/x", d, error));
    BOOST_TEST(d.config_file.empty());
    BOOST_TEST(d.image == "nbd://host/x");
    blkdebug_config e;
    BOOST_TEST(parse_blkdebug_name("blkdebug:only", e, error) == make_error_code(errc::invalid_argument));
    BOOST_TEST(error.find("requires both config file and image path") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(rules_file_errors_name_file_and_line) {
    std::vector<blkdebug_rule> rules;
    std::string error;
    auto p = write_file("a", "[inject-error]\nevent = \"read_aio\"\n\n# c\nfrobnicate = \"1\"\n");
    BOOST_TEST(read_blkdebug_rules(p, rules, error) == make_error_code(errc::invalid_argument));
    BOOST_TEST(error == p + ":5: Invalid parameter 'frobnicate' in [inject-error]");
    p = write_file("b", "[set-state]\nevent = \"no_such_event\"\n");
    BOOST_TEST(read_blkdebug_rules(p, rules, error) == make_error_code(errc::invalid_argument));
    BOOST_TEST(error == p + ":2: unknown event 'no_such_event'");
    p = write_file("c", "[inject-error]\nerrno = \"5\"\n");
    BOOST_TEST(read_blkdebug_rules(p, rules, error) == make_error_code(errc::invalid_argument));
    BOOST_TEST(error == p + ":1: Missing event name for rule");
    p = write_file("d", "[breakpoint]\nevent = \"read_aio\"\n");
    BOOST_TEST(read_blkdebug_rules(p, rules, error) == make_error_code(errc::invalid_argument));
    BOOST_TEST(error.find(p + ":1: unknown section [breakpoint]") == 0);
    p = write_file("e", "[inject-error]\nevent = \"read_aio\"\nsector = \"x12\"\n");
    BOOST_TEST(read_blkdebug_rules(p, rules, error) == make_error_code(errc::invalid_argument));
    BOOST_TEST(error.find(p + ":3:") == 0);
    BOOST_TEST(rules.empty());  // nothing half-read is kept
    BOOST_TEST(read_blkdebug_rules(dir.path() + "/missing", rules, error) ==
               std::error_code(ENOENT, std::system_category()));
    p = write_file("ok",
                   "[inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\nonce = \"on\"\nsector = \"0x10\"\n"
                   "iotype = \"write\"\n[set-state]\nstate = \"1\"\nevent = \"flush_to_disk\"\nnew_state = \"2\"\n");
    BOOST_TEST(!read_blkdebug_rules(p, rules, error));
    BOOST_REQUIRE(rules.size() == 2);
    BOOST_TEST(rules[0].error == 28);
    BOOST_TEST(rules[0].once);
    BOOST_TEST(rules[0].sector == 16);
    BOOST_TEST(rules[0].iotypes == 1u << static_cast<unsigned>(blkdebug_io::write));
    BOOST_TEST((rules[1].action == blkdebug_rule::kind::set_state));
    BOOST_TEST(rules[1].new_state == 2);
}

BOOST_AUTO_TEST_CASE(event_activates_rule_and_errno_surfaces) {
    auto storage = std::make_shared<memory_storage>();
    storage->resize(1 << 20);
    blkdebug_rule r;
    r.event = blkdbg_event::read_aio;
    r.error = ENOSPC;
    r.sector = 8;  // bytes 4096..4607
    std::error_code ec;
    auto f = make_blkdebug_file(make_memory_file(ioc.get_executor(), storage), {r}, 0, ec);
    BOOST_REQUIRE(f);
    char buf[4096];
    BOOST_TEST(!read(*f, 4096, buf, 512));  // not active before its event
    f->debug_event(blkdbg_event::write_aio);
    BOOST_TEST(!read(*f, 4096, buf, 512));
    f->debug_event(blkdbg_event::read_aio);
    BOOST_TEST(read(*f, 4096, buf, 512) == std::error_code(ENOSPC, std::system_category()));
    BOOST_TEST(read(*f, 4000, buf, 200) == std::error_code(ENOSPC, std::system_category()));
    BOOST_TEST(!read(*f, 4097, buf, 100));        // QEMU: the sector's first byte must be in the request
    BOOST_TEST(!read(*f, 0, buf, 4096));          // ends before the sector
    BOOST_TEST(!read(*f, 4096 + 512, buf, 512));  // starts after it
    // Writes and flushes are failed too (QEMU's default iotypes), once written.
    BOOST_TEST(write(*f, 4096, buf, 512) == std::error_code(ENOSPC, std::system_category()));
    BOOST_TEST(!flush(*f));  // nothing written: nothing to flush, as QEMU
}

BOOST_AUTO_TEST_CASE(once_state_machine_and_none) {
    auto storage = std::make_shared<memory_storage>();
    storage->resize(1 << 20);
    // 041's rules: in state 1 the read error is armed, each read_aio flips 1 <-> 2.
    auto p = write_file("r",
                        "[inject-error]\nstate = \"1\"\nevent = \"read_aio\"\nerrno = \"5\"\nonce = \"on\"\n"
                        "sector = \"4\"\n\n[set-state]\nstate = \"1\"\nevent = \"read_aio\"\nnew_state = \"2\"\n\n"
                        "[set-state]\nstate = \"2\"\nevent = \"read_aio\"\nnew_state = \"1\"\n"
                        "[inject-error]\nevent = \"none\"\niotype = \"flush\"\nerrno = \"28\"\n");
    std::vector<blkdebug_rule> rules;
    std::string error;
    BOOST_REQUIRE(!read_blkdebug_rules(p, rules, error));
    std::error_code ec;
    auto f = make_blkdebug_file(make_memory_file(ioc.get_executor(), storage), rules, 0, ec);
    char buf[512] = {};
    // `none` is active from the start: the first real flush fails with ENOSPC.
    BOOST_TEST(!write(*f, 0, buf, 512));
    BOOST_TEST(flush(*f) == std::error_code(ENOSPC, std::system_category()));
    f->debug_event(blkdbg_event::read_aio);  // state 1: armed; -> 2
    BOOST_TEST(!read(*f, 0, buf, 512));      // another sector
    BOOST_TEST(read(*f, 2048, buf, 512) == eio());
    BOOST_TEST(!read(*f, 2048, buf, 512));   // once: gone
    f->debug_event(blkdbg_event::read_aio);  // state 2 -> 1, nothing armed
    f->debug_event(blkdbg_event::read_aio);  // state 1, but the once rule was deleted
    BOOST_TEST(!read(*f, 2048, buf, 512));
}

BOOST_AUTO_TEST_CASE(alignment_widens_misaligned_requests) {
    auto storage = std::make_shared<memory_storage>();
    std::vector<char> pattern(16384);
    for (std::size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<char>(i * 7 + 1);
    storage->write(0, std::as_bytes(std::span(pattern)));
    std::error_code ec;
    BOOST_TEST(!make_blkdebug_file(make_memory_file(ioc.get_executor(), storage), {}, 3000, ec));
    BOOST_TEST(ec == make_error_code(errc::invalid_argument));
    auto f = make_blkdebug_file(make_memory_file(ioc.get_executor(), storage), {}, 4096, ec);
    BOOST_REQUIRE(f);
    BOOST_TEST(f->alignment() == 4096u);
    char buf[1000];
    BOOST_TEST(!read(*f, 4000, buf, 1000));
    BOOST_TEST(std::memcmp(buf, pattern.data() + 4000, 1000) == 0);
    const char in[600] = {'x', 'y', 'z'};
    BOOST_TEST(!write(*f, 8100, in, 600));  // straddles two blocks: head and tail kept
    std::memcpy(pattern.data() + 8100, in, 600);
    std::vector<std::byte> back(16384);
    storage->read(0, back);
    BOOST_TEST(std::memcmp(back.data(), pattern.data(), pattern.size()) == 0);
    // The head block is read through the rules: a read error fails the write.
    blkdebug_rule r;
    r.event = blkdbg_event::none;
    r.sector = 0;
    r.iotypes = 1u << static_cast<unsigned>(blkdebug_io::read);
    auto g = make_blkdebug_file(make_memory_file(ioc.get_executor(), storage), {r}, 4096, ec);
    BOOST_TEST(write(*g, 100, in, 10) == eio());
    BOOST_TEST(!write(*g, 4096, in, 10));
}

BOOST_AUTO_TEST_CASE(image_announces_data_reads_to_its_file) {
    const std::string img_path = dir.path() + "/t.qed";
    create_options co;
    co.size = 1 << 20;
    BOOST_REQUIRE(!test::create(ioc, img_path, co));
    {
        test::sync_image s{ioc, {}};
        open_options o;
        o.read_only = false;
        auto [oec, img] = await<std::error_code, image>(
            ioc, [&](auto h) { image::async_open(ioc.get_executor(), img_path, o, std::move(h)); });
        BOOST_REQUIRE(!oec);
        s.img = img;
        char data[512] = {1};
        BOOST_REQUIRE(!s.write(0, data, 512));
        BOOST_REQUIRE(!s.close());
    }
    const auto rules = write_file("rules", "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n");
    open_options o;
    auto [oec, img] = await<std::error_code, image>(ioc, [&](auto h) {
        image::async_open(ioc.get_executor(), "blkdebug:" + rules + ":" + img_path, o, std::move(h));
    });
    BOOST_REQUIRE(!oec);  // opening reads header and L1: no read_aio yet
    test::sync_image s{ioc, img};
    char buf[512];
    BOOST_TEST(s.read(0, buf, 512) == eio());
    BOOST_TEST(!s.close());
}

BOOST_AUTO_TEST_CASE(bad_rules_file_fails_the_open_with_its_line) {
    const auto rules = write_file("bad", "[inject-error]\nevent = \"read_aio\"\nbogus = \"1\"\n");
    std::vector<std::string> lines;
    file_options fo;
    fo.log = [&](std::string_view l) { lines.emplace_back(l); };
    std::error_code ec;
    auto f = open_file(ioc.get_executor(), "blkdebug:" + rules + ":" + dir.path() + "/nothing", fo, ec);
    BOOST_TEST(!f);
    BOOST_TEST(ec == make_error_code(errc::invalid_argument));
    BOOST_REQUIRE(lines.size() == 1u);
    BOOST_TEST(lines[0] == rules + ":3: Invalid parameter 'bogus' in [inject-error]");
}

// block-status rules fail block status queries that cover their sector (and
// nothing else: reads go through); queries that do not cover it are
// answered by the file below.
BOOST_AUTO_TEST_CASE(block_status_rules_fail_queries_covering_their_sector) {
    auto storage = std::make_shared<memory_storage>();
    storage->resize(1 << 20);
    std::vector<char> data(65536, 'x');
    storage->write(0, std::as_bytes(std::span(data)));
    blkdebug_rule r;
    std::string why;
    BOOST_REQUIRE(set_blkdebug_rule_option(r, "iotype", "block-status", why));
    BOOST_REQUIRE(set_blkdebug_rule_option(r, "sector", "16", why));  // byte 8192
    std::error_code ec;
    auto f = make_blkdebug_file(make_memory_file(ioc.get_executor(), storage), {r}, 0, ec);
    BOOST_REQUIRE(f);
    auto status = [&](std::uint64_t off, std::uint64_t len) {
        return await<std::error_code, std::vector<file_extent>>(
            ioc, [&](auto h) { f->async_block_status(off, len, file_status_handler(std::move(h))); });
    };
    auto [e1, runs1] = status(0, 1 << 20);
    BOOST_TEST(e1 == eio());
    BOOST_TEST(runs1.empty());
    // Not covering byte 8192: the memory file's answer (64 KiB of data first).
    auto [e2, runs2] = status(8704, 4096);
    BOOST_TEST(!e2);
    BOOST_REQUIRE(!runs2.empty());
    BOOST_TEST(runs2[0].data);
    BOOST_TEST(!runs2[0].zero);
    // The rule is for block status only: a read of its sector succeeds.
    char buf[512];
    BOOST_TEST(!read(*f, 8192, buf, sizeof buf));
    BOOST_TEST(buf[0] == 'x');
    BOOST_TEST(std::get<0>(status(8192, 512)) == eio());
    BOOST_TEST(std::get<0>(status(8192, 512)) == eio());  // not `once`: it stays
}

// blkdebug above a format node (json: with "image": {"driver": "qed"}):
// block status of the raw view is the image's own (data where written,
// zeros elsewhere), and the block-status rules fail what covers their sector.
BOOST_AUTO_TEST_CASE(block_status_through_an_image_below_blkdebug) {
    const std::string img_path = dir.path() + "/b.qed";
    create_options co;
    co.size = 1 << 20;
    BOOST_REQUIRE(!test::create(ioc, img_path, co));
    {
        open_options o;
        o.read_only = false;
        auto [oec, img] = await<std::error_code, image>(
            ioc, [&](auto h) { image::async_open(ioc.get_executor(), img_path, o, std::move(h)); });
        BOOST_REQUIRE(!oec);
        test::sync_image s{ioc, img};
        std::vector<char> data(65536, 'q');
        BOOST_REQUIRE(!s.write(0, data.data(), data.size()));
        BOOST_REQUIRE(!s.close());
    }
    const std::string name =
        "json:{'driver': 'blkdebug', 'image': {'driver': 'qed', 'file': {'driver': 'file', "
        "'filename': '" +
        img_path +
        "'}}, 'inject-error': [{'event': 'none', 'iotype': "
        "'block-status', 'errno': 5, 'sector': 200}]}";
    open_options o;
    auto [oec, img] = await<std::error_code, image>(
        ioc, [&](auto h) { image::async_open(ioc.get_executor(), name, o, std::move(h)); });
    BOOST_REQUIRE_MESSAGE(!oec, oec.message());
    test::sync_image s{ioc, img};
    auto [e1, x1] = s.block_status(0, 65536);
    BOOST_TEST(!e1);
    BOOST_REQUIRE(x1.size() == 1u);
    BOOST_TEST(x1[0].data);
    BOOST_TEST(!x1[0].zero);
    BOOST_TEST(x1[0].length == 65536u);
    // Sector 200 (byte 102400) is in [65536, 1 MiB): the query fails.
    BOOST_TEST(s.block_status(65536, (1 << 20) - 65536).first == eio());
    auto [e2, x2] = s.block_status(131072, (1 << 20) - 131072);
    BOOST_TEST(!e2);
    BOOST_REQUIRE(x2.size() == 1u);
    BOOST_TEST(!x2[0].data);
    BOOST_TEST(x2[0].zero);
    BOOST_TEST(x2[0].length == (1u << 20) - 131072);
    BOOST_TEST(!s.close());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_FIXTURE_TEST_SUITE(null_co, fixture)

BOOST_AUTO_TEST_CASE(reads_zeros_drops_writes) {
    std::error_code ec;
    auto f = open_file(ioc.get_executor(), "null-co://", file_options{.read_only = false, .log = {}, .notice = {}}, ec);
    BOOST_REQUIRE(f);
    BOOST_TEST(f->size(ec) == std::uint64_t{1} << 30);
    char buf[4096];
    std::memset(buf, 0x55, sizeof buf);
    BOOST_TEST(!write(*f, 0, buf, sizeof buf));
    BOOST_TEST(!read(*f, 0, buf, sizeof buf));
    BOOST_TEST(std::all_of(buf, buf + sizeof buf, [](char c) { return c == 0; }));
    BOOST_TEST(!flush(*f));
    std::vector<std::string> lines;
    file_options fo;
    fo.log = [&](std::string_view l) { lines.emplace_back(l); };
    BOOST_TEST(!open_file(ioc.get_executor(), "null-co://?size=4", fo, ec));
    BOOST_REQUIRE(lines.size() == 1u);
    BOOST_TEST(lines[0] == "null-co://?size=4: The only allowed filename for this driver is 'null-co://'");
}

BOOST_AUTO_TEST_SUITE_END()
