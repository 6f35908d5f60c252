// SPDX-License-Identifier: BSL-1.0
// Untrusted images: the backing file name is a path chosen by whoever made
// the image. With open_options::allowed_backing_dir set (qed-nbd sets it by
// default), every backing file must resolve inside that directory --
// absolute paths, "../" escapes, symlinks and directory symlinks pointing
// outside are refused. Backing chains are limited in depth, and a chain
// that comes back to an image already in it is refused, however the path
// is spelled (symlink, hard link, "./", "dir/..").
//
// Real files in temporary directories (realpath and file identities are
// what is under test).
#include <boost/test/unit_test.hpp>
#include <filesystem>

#include "qed/image.hpp"
#include "support/log_lines.hpp"
#include "support/model.hpp"
#include "support/sync.hpp"
#include "support/tmp_dir.hpp"

using namespace qed;
using namespace qed::test;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t size = 1024 * 1024;
constexpr std::uint64_t secret_tag = 66, base_tag = 5;

/// A raw file whose sectors carry `tag`.
void make_raw(const std::string& path, std::uint64_t tag) {
    std::vector<std::uint8_t> b(size);
    for (std::uint64_t s = 0; s < size / 512; ++s) fill_sector(&b[s * 512], tag, s);
    pwrite_file(path, 0, b.data(), b.size());
}

struct fixture {
    boost::asio::io_context ioc;
    tmp_dir root{"untrusted"};
    std::string a = root / "A";  // the allowed directory
    std::string b = root / "B";  // somewhere else
    log_lines log;

    fixture() {
        fs::create_directories(a);
        fs::create_directories(b);
        make_raw(a + "/base.raw", base_tag);
        make_raw(b + "/secret.raw", secret_tag);
    }

    void make_qed(const std::string& path, const std::string& backing, image_format fmt = image_format::raw) {
        create_options co;
        co.size = size;  // given: create does not open the backing file
        co.cluster_size = 4096;
        co.backing_file = backing;
        if (!backing.empty()) co.backing_format = fmt;
        const std::error_code ec = create(ioc, path, co);
        BOOST_REQUIRE_MESSAGE(!ec, "create " << path << ": " << ec.message());
    }

    std::pair<std::error_code, sync_image> open_image(const std::string& path, std::optional<std::string> allowed,
                                                      unsigned max_depth = 16) {
        log.clear();
        open_options o;
        o.read_only = true;
        o.allowed_backing_dir = std::move(allowed);
        o.max_backing_depth = max_depth;
        o.log = log.sink();
        return open(ioc, path, o);
    }
    bool logged(const std::string& word) const { return log.mentions(word); }
    std::string all_log() const { return log.all(); }
    /// The first sector of the guest: which raw file it came from.
    std::uint64_t first_tag(sync_image& img) {
        std::vector<std::uint8_t> got(512);
        BOOST_REQUIRE(!img.read(0, got.data(), got.size()));
        for (std::uint64_t t : {base_tag, secret_tag})
            if (model::match(got.data(), 0, {t}) == 0) return t;
        return 0;
    }

    /// Open `top` confined to A: must be refused with backing_not_allowed,
    /// and the log must say why and name the path.
    void expect_refused(const std::string& top, const std::string& name_in_log) {
        auto [ec, img] = open_image(top, a);
        BOOST_CHECK_MESSAGE(ec == errc::backing_not_allowed, top << ": got \"" << ec.message() << "\"" << all_log());
        BOOST_CHECK_MESSAGE(logged("outside the allowed directory"), all_log());
        BOOST_CHECK_MESSAGE(logged(name_in_log), "the log does not name " << name_in_log << all_log());
        // One line that says what was refused and names the directory by
        // its real path (not " ." for a relative one), said once.
        const std::string all = all_log();
        BOOST_CHECK_MESSAGE(all.find("refused to open backing file") != std::string::npos, all);
        BOOST_CHECK_MESSAGE(all.find("outside the allowed directory " + fs::canonical(a).string()) != std::string::npos,
                            all);
        BOOST_CHECK_MESSAGE(all.find("outside the allowed directory") == all.rfind("outside the allowed directory"),
                            all);
        BOOST_CHECK(!img.img.is_open());
    }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(untrusted)

BOOST_AUTO_TEST_CASE(backing_inside_the_allowed_directory_opens) {
    fixture f;
    f.make_qed(f.a + "/rel.qed", "base.raw");
    f.make_qed(f.a + "/abs.qed", f.a + "/base.raw");
    f.make_qed(f.a + "/dots.qed", "./sub/../base.raw");
    fs::create_directories(f.a + "/sub");
    fs::create_symlink("base.raw", f.a + "/link.raw");
    f.make_qed(f.a + "/link.qed", "link.raw");
    for (const char* top : {"rel.qed", "abs.qed", "dots.qed", "link.qed"}) {
        // The allowed directory may itself be spelled loosely.
        for (const std::string& allowed : {f.a, f.a + "/", f.a + "/./sub/.."}) {
            auto [ec, img] = f.open_image(f.a + "/" + top, allowed);
            BOOST_REQUIRE_MESSAGE(!ec, top << " confined to " << allowed << ": " << ec.message() << f.all_log());
            BOOST_CHECK_EQUAL(f.first_tag(img), base_tag);
            BOOST_CHECK_EQUAL(img.img.info().chain_depth, 1u);
            BOOST_REQUIRE(!img.close());
        }
    }
}

BOOST_AUTO_TEST_CASE(absolute_path_outside_is_refused) {
    fixture f;
    const std::string secret = f.b + "/secret.raw";
    f.make_qed(f.a + "/top.qed", secret);
    f.expect_refused(f.a + "/top.qed", secret);
    // Without confinement the same image reads the file: it is the option that protects.
    auto [ec, img] = f.open_image(f.a + "/top.qed", std::nullopt);
    BOOST_REQUIRE_MESSAGE(!ec, ec.message());
    BOOST_CHECK_EQUAL(f.first_tag(img), secret_tag);
    BOOST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(dot_dot_escape_is_refused) {
    fixture f;
    f.make_qed(f.a + "/top.qed", "../B/secret.raw");
    f.expect_refused(f.a + "/top.qed", "secret.raw");
    f.make_qed(f.a + "/deep.qed", "./x/../../B/secret.raw");
    fs::create_directories(f.a + "/x");
    f.expect_refused(f.a + "/deep.qed", "secret.raw");
    // A sibling directory whose name merely starts with the allowed one's.
    fs::create_directories(f.a + "2");
    make_raw(f.a + "2/secret.raw", secret_tag);
    f.make_qed(f.a + "/sibling.qed", "../A2/secret.raw");
    f.expect_refused(f.a + "/sibling.qed", "A2/secret.raw");
}

BOOST_AUTO_TEST_CASE(symlink_pointing_outside_is_refused) {
    fixture f;
    fs::create_symlink(f.b + "/secret.raw", f.a + "/innocent.raw");
    f.make_qed(f.a + "/top.qed", "innocent.raw");
    f.expect_refused(f.a + "/top.qed", "innocent.raw");
    // A directory symlink inside A leading out of it.
    fs::create_directory_symlink(f.b, f.a + "/subdir");
    f.make_qed(f.a + "/dir.qed", "subdir/secret.raw");
    f.expect_refused(f.a + "/dir.qed", "subdir/secret.raw");
    // A relative symlink climbing out.
    fs::create_symlink("../B/secret.raw", f.a + "/climb.raw");
    f.make_qed(f.a + "/climb.qed", "climb.raw");
    f.expect_refused(f.a + "/climb.qed", "climb.raw");
}

BOOST_AUTO_TEST_CASE(every_level_of_a_chain_is_confined) {
    fixture f;
    f.make_qed(f.a + "/mid.qed", f.b + "/secret.raw");
    f.make_qed(f.a + "/top.qed", "mid.qed", image_format::qed);
    f.expect_refused(f.a + "/top.qed", "secret.raw");
}

BOOST_AUTO_TEST_CASE(missing_backing_file_inside_the_allowed_directory_says_missing) {
    // A backing file that does not exist is not "outside the allowed
    // directory": the error should say it is missing, and name it.
    fixture f;
    f.make_qed(f.a + "/top.qed", "gone.raw");
    auto [ec, img] = f.open_image(f.a + "/top.qed", f.a);
    BOOST_CHECK(ec);
    BOOST_CHECK_MESSAGE(f.logged("gone.raw"), f.all_log());
    BOOST_CHECK_MESSAGE(ec == std::errc::no_such_file_or_directory,
                        "a missing backing file under confinement gives \"" << ec.message() << "\"" << f.all_log());
    // Unconfined, it is reported as missing.
    auto [ec2, img2] = f.open_image(f.a + "/top.qed", std::nullopt);
    BOOST_CHECK(ec2 == std::errc::no_such_file_or_directory);
    BOOST_CHECK(f.logged("gone.raw"));
}

BOOST_AUTO_TEST_CASE(chain_depth_is_limited) {
    fixture f;
    // l0 = base.raw <- l1.qed <- l2.qed <- ... <- l40.qed
    std::string below = "base.raw";
    for (int i = 1; i <= 40; ++i) {
        const std::string name = "l" + std::to_string(i) + ".qed";
        f.make_qed(f.a + "/" + name, below, i == 1 ? image_format::raw : image_format::qed);
        below = name;
    }
    auto top = [&](int i) { return f.a + "/l" + std::to_string(i) + ".qed"; };
    // Exactly at the limit: opens, all levels there.
    for (unsigned limit : {1u, 4u, 16u}) {
        {
            auto [ec, img] = f.open_image(top(static_cast<int>(limit)), std::nullopt, limit);
            BOOST_REQUIRE_MESSAGE(!ec, "chain of " << limit << " with limit " << limit << ": " << ec.message());
            BOOST_CHECK_EQUAL(img.img.info().chain_depth, limit);
            BOOST_CHECK_EQUAL(f.first_tag(img), base_tag);
            BOOST_REQUIRE(!img.close());
        }
        // One more level: refused, clearly.
        auto [ec, img] = f.open_image(top(static_cast<int>(limit) + 1), std::nullopt, limit);
        BOOST_CHECK_MESSAGE(ec == errc::backing_chain_too_deep, "limit " << limit << ": " << ec.message());
        BOOST_CHECK_MESSAGE(f.logged("deeper than " + std::to_string(limit)), f.all_log());
    }
    // The default limit (16) stops a 40-level chain, confined or not.
    {
        auto [ec, img] = f.open_image(top(40), std::nullopt);
        BOOST_CHECK(ec == errc::backing_chain_too_deep);
        auto [ec2, img2] = f.open_image(top(40), f.a);
        BOOST_CHECK(ec2 == errc::backing_chain_too_deep);
    }
    // Limit 0: no backing file at all.
    auto [ec, img] = f.open_image(top(1), std::nullopt, 0);
    BOOST_CHECK(ec == errc::backing_chain_too_deep);
}

BOOST_AUTO_TEST_CASE(loops_are_refused) {
    fixture f;
    auto expect_loop = [&](const std::string& top, std::optional<std::string> allowed) {
        auto [ec, img] = f.open_image(top, allowed, 1000);  // a loop, not the depth limit, must stop it
        BOOST_CHECK_MESSAGE(ec == errc::backing_loop,
                            top << (allowed ? " (confined)" : "") << ": got \"" << ec.message() << "\"" << f.all_log());
        BOOST_CHECK_MESSAGE(f.logged("refers back"), f.all_log());
    };
    // a -> a
    f.make_qed(f.a + "/self.qed", "self.qed", image_format::qed);
    expect_loop(f.a + "/self.qed", std::nullopt);
    expect_loop(f.a + "/self.qed", f.a);
    // a -> b -> a
    f.make_qed(f.a + "/a.qed", "b.qed", image_format::qed);
    f.make_qed(f.a + "/b.qed", "a.qed", image_format::qed);
    expect_loop(f.a + "/a.qed", std::nullopt);
    expect_loop(f.a + "/b.qed", f.a);
    // top -> c -> d -> c: the loop below the top image
    f.make_qed(f.a + "/c.qed", "d.qed", image_format::qed);
    f.make_qed(f.a + "/d.qed", "c.qed", image_format::qed);
    f.make_qed(f.a + "/top.qed", "c.qed", image_format::qed);
    expect_loop(f.a + "/top.qed", std::nullopt);
    // Spelled differently: "./", "sub/..", a symlink, a hard link.
    fs::create_directories(f.a + "/sub");
    f.make_qed(f.a + "/dot.qed", "./dot.qed", image_format::qed);
    expect_loop(f.a + "/dot.qed", std::nullopt);
    f.make_qed(f.a + "/up.qed", "sub/../up.qed", image_format::qed);
    expect_loop(f.a + "/up.qed", f.a);
    f.make_qed(f.a + "/viasym.qed", "sym.qed", image_format::qed);
    fs::create_symlink("viasym.qed", f.a + "/sym.qed");
    expect_loop(f.a + "/viasym.qed", std::nullopt);
    expect_loop(f.a + "/viasym.qed", f.a);
    f.make_qed(f.a + "/hard.qed", "hard2.qed", image_format::qed);
    fs::create_hard_link(f.a + "/hard.qed", f.a + "/hard2.qed");
    expect_loop(f.a + "/hard.qed", std::nullopt);
    // Opened through a symlink itself, pointing at itself by its real name.
    f.make_qed(f.a + "/real.qed", "real.qed", image_format::qed);
    fs::create_symlink("real.qed", f.a + "/alias.qed");
    expect_loop(f.a + "/alias.qed", std::nullopt);
}

BOOST_AUTO_TEST_CASE(a_read_write_open_of_a_refused_image_changes_nothing) {
    fixture f;
    f.make_qed(f.a + "/top.qed", f.b + "/secret.raw");
    // Mark it dirty: a read-write open would check and repair, but the
    // backing file is refused first and nothing is written.
    auto bytes = read_file(f.a + "/top.qed");
    bytes[16] |= feature_need_check;
    pwrite_file(f.a + "/top.qed", 0, bytes.data(), bytes.size());
    open_options o;
    o.allowed_backing_dir = f.a;
    o.log = f.log.sink();
    auto [ec, img] = open(f.ioc, f.a + "/top.qed", o);
    BOOST_CHECK(ec == errc::backing_not_allowed);
    BOOST_CHECK(read_file(f.a + "/top.qed") == bytes);
}

BOOST_AUTO_TEST_SUITE_END()
