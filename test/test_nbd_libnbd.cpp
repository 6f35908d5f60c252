// SPDX-License-Identifier: BSL-1.0
// qed-nbd with libnbd's clients: nbdinfo (export information, --list,
// --map for holes and zero clusters) and nbdcopy in both directions, with
// one connection and with multi-conn, over TCP and a Unix socket.
#include <tuple>

#include "test_nbd_support.hpp"

using namespace nbdtest;

namespace {

bool have_libnbd(boost::unit_test::test_unit_id) {
    return have("nbdinfo") && have("nbdcopy");
}

constexpr std::uint64_t mib = 1 << 20;

/// nbdinfo --map lines as (offset, length, type).
std::vector<std::tuple<std::uint64_t, std::uint64_t, unsigned>> parse_map(const std::string& out) {
    std::vector<std::tuple<std::uint64_t, std::uint64_t, unsigned>> v;
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream l(line);
        std::uint64_t off = 0, len = 0;
        unsigned type = 0;
        if (l >> off >> len >> type) v.emplace_back(off, len, type);
    }
    return v;
}

/// Source data for copies: random MiBs and all-zero MiBs.
std::string mixed_data(std::size_t size, std::uint32_t seed) {
    std::string s = random_bytes(size, seed);
    for (std::size_t off = 2 * mib; off < size; off += 4 * mib)
        std::fill_n(s.begin() + off, std::min(mib, size - off), '\0');
    return s;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(nbd_libnbd, *boost::unit_test::precondition(have_libnbd))

BOOST_AUTO_TEST_CASE(nbdinfo_export_information) {
    temp_dir dir("nbdinfo");
    const std::string image = dir / "disk.qed";
    create_qed(image, 64 * mib);
    server srv(dir);
    srv.start({"-t", "-x", "disk", "-D", "test disk"}, image);
    const auto info = NBD_RUN_OK(dir.path(), {"nbdinfo", "--json", srv.uri("disk")});
    for (const char* want : {"\"export-size\": 67108864", "\"can_trim\": false", "\"can_flush\": true",
                             "\"can_fua\": true", "\"can_zero\": true", "\"can_multi_conn\": false",
                             "\"block_size_minimum\": 512", "\"block_size_maximum\": 33554432",
                             "\"description\": \"test disk\"", "\"base:allocation\"", "\"structured\": true"})
        BOOST_CHECK_MESSAGE(info.out.find(want) != std::string::npos, "missing " << want << " in " << info.out);
    const auto list = NBD_RUN_OK(dir.path(), {"nbdinfo", "--list", srv.uri()});
    BOOST_CHECK(list.out.find("export=\"disk\"") != std::string::npos);
    // A wrong export name is refused during negotiation; the server goes on.
    const auto wrong = run({"nbdinfo", srv.uri("nope")}, dir.path());
    BOOST_CHECK_NE(wrong.status, 0);
    const auto size = NBD_RUN_OK(dir.path(), {"nbdinfo", "--size", srv.uri("disk")});
    BOOST_CHECK_EQUAL(size.out, "67108864\n");
    BOOST_CHECK_EQUAL(srv.stop(), 0);

    // Read-only, several clients: multi-conn is advertised.
    srv.start({"-t", "-r", "-e", "4"}, image);
    const auto ro = NBD_RUN_OK(dir.path(), {"nbdinfo", "--json", srv.uri()});
    BOOST_CHECK(ro.out.find("\"is_read_only\": true") != std::string::npos);
    BOOST_CHECK(ro.out.find("\"can_multi_conn\": true") != std::string::npos);
    BOOST_CHECK_EQUAL(srv.stop(), 0);
}

BOOST_AUTO_TEST_CASE(nbdinfo_map_shows_holes_and_zero_clusters) {
    temp_dir dir("nbdmap");
    const std::string image = dir / "disk.qed";
    create_qed(image, 64 * mib);
    write_image(image, 0, std::string(64 * 1024, 'd'));
    zero_image(image, 1 * mib, 1 * mib);  // zero clusters
    write_image(image, 4 * mib, std::string(128 * 1024, 'e'));
    zero_image(image, 4 * mib, 64 * 1024, false);  // written zeros stay data
    server srv(dir);
    srv.start({"-t", "-r"}, image);

    // base:allocation: data, and holes that read as zeros (type 3) for both
    // unallocated clusters and zero clusters.
    const auto map = NBD_RUN_OK(dir.path(), {"nbdinfo", "--map", srv.uri()});
    using row = std::tuple<std::uint64_t, std::uint64_t, unsigned>;
    const std::vector<row> want{
        {0, 65536, 0}, {65536, 4 * mib - 65536, 3}, {4 * mib, 131072, 0}, {4 * mib + 131072, 60 * mib - 131072, 3}};
    BOOST_CHECK_MESSAGE(parse_map(map.out) == want, map.out);
    BOOST_CHECK(map.out.find("hole,zero") != std::string::npos);

    // qemu:allocation-depth tells zero clusters (allocated here: depth 1)
    // from clusters that are not allocated at all (0).
    const auto depth = NBD_RUN_OK(dir.path(), {"nbdinfo", "--map=qemu:allocation-depth", srv.uri()});
    const std::vector<row> want_depth{{0, 65536, 1},        {65536, mib - 65536, 0},
                                      {mib, mib, 1},        {2 * mib, 2 * mib, 0},
                                      {4 * mib, 131072, 1}, {4 * mib + 131072, 60 * mib - 131072, 0}};
    BOOST_CHECK_MESSAGE(parse_map(depth.out) == want_depth, depth.out);
    BOOST_CHECK(depth.out.find("local") != std::string::npos);

    // A sub-range, and the totals.
    const auto part = NBD_RUN_OK(dir.path(), {"nbdinfo", "--map", "--totals", srv.uri()});
    BOOST_CHECK_MESSAGE(part.out.find("hole,zero") != std::string::npos, part.out);
    BOOST_CHECK_EQUAL(srv.stop(), 0);
}

BOOST_AUTO_TEST_CASE(nbdcopy_both_directions) {
    temp_dir dir("nbdcopy");
    const std::string src = dir / "src.raw";
    write_file(src, mixed_data(40 * mib, 11));
    // One connection (-e 1: no multi-conn), then multi-conn with 4
    // connections, then a Unix socket with every write FUA.
    struct variant {
        std::vector<std::string> args;
        bool unix_socket;
    };
    const variant variants[] = {
        {{"-t"}, false}, {{"-t", "-e", "8"}, false}, {{"-t", "-e", "0", "--cache=writethrough"}, true}};
    int n = 0;
    for (const auto& v : variants) {
        BOOST_TEST_CONTEXT("variant " << n) {
            const std::string image = dir / ("disk" + std::to_string(n) + ".qed");
            const std::string back = dir / ("back" + std::to_string(n) + ".raw");
            ++n;
            create_qed(image, 48 * mib);
            server srv(dir);
            srv.start(v.args, image, v.unix_socket);
            NBD_RUN_OK(dir.path(), {"nbdcopy", "--flush", "--connections=4", src, srv.uri()});
            NBD_RUN_OK(dir.path(), {"nbdcopy", "--connections=4", srv.uri(), back});
            BOOST_CHECK_EQUAL(srv.stop(), 0);
            const std::string got = read_file(back);
            BOOST_REQUIRE_EQUAL(got.size(), 48 * mib);
            BOOST_CHECK(got.compare(0, 40 * mib, read_file(src)) == 0);
            BOOST_CHECK(got.find_first_not_of('\0', 40 * mib) == std::string::npos);
            verify_image(image, 0, read_file(src).substr(0, 4 * mib));
            if (have("qemu-img")) NBD_RUN_OK(dir.path(), {"qemu-img", "check", "-q", "-f", "qed", image});
        }
    }
}

BOOST_AUTO_TEST_CASE(nbdcopy_between_two_servers_and_killed_copies) {
    temp_dir dir("nbdcopy2");
    const std::string a = dir / "a.qed";
    const std::string b = dir / "b.qed";
    create_qed(a, 128 * mib);
    create_qed(b, 128 * mib);
    write_image(a, 0, mixed_data(96 * mib, 21));
    server sa(dir);
    server sb(dir);
    sa.start({"-t", "-r", "-e", "8"}, a);
    sb.start({"-t", "-e", "8"}, b, true);
    // Killed in the middle, twice; then a complete copy.
    int killed = 0;
    for (int round = 0; round < 2; ++round) {
        child copy({"nbdcopy", sa.uri(), sb.uri()}, dir / "copy.out", dir / "copy.err");
        std::this_thread::sleep_for(std::chrono::milliseconds(60 + 60 * round));
        if (!copy.poll()) ++killed;
        copy.kill_hard();
    }
    BOOST_TEST_MESSAGE(killed << " of 2 copies killed while running");
    NBD_RUN_OK(dir.path(), {"nbdcopy", "--flush", sa.uri(), sb.uri()});
    const std::string out = dir / "out.raw";
    NBD_RUN_OK(dir.path(), {"nbdcopy", sb.uri(), out});
    BOOST_CHECK_EQUAL(sa.stop(), 0);
    BOOST_CHECK_EQUAL(sb.stop(), 0);
    const std::string got = read_file(out);
    BOOST_CHECK(got.compare(0, 96 * mib, mixed_data(96 * mib, 21)) == 0);
    verify_image(b);
    if (have("qemu-img")) NBD_RUN_OK(dir.path(), {"qemu-img", "check", "-q", "-f", "qed", b});
}

BOOST_AUTO_TEST_SUITE_END()
