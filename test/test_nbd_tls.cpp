// SPDX-License-Identifier: BSL-1.0
// qed-nbd over TLS (NBD_OPT_STARTTLS, OpenSSL through boost::asio::ssl)
// with GnuTLS clients: qemu-img / qemu-io with tls-creds objects, nbdinfo
// and nbdcopy with nbds:// URIs. X.509 with client certificates and an
// allow list of client names, pre-shared keys; and every refusal: wrong CA,
// no or expired client certificate, unknown PSK user or wrong key, a client
// that does not start TLS, a name not allowed. Each refusal leaves one line
// in the server's log naming the client's address and the reason, and the
// image unchanged. Credentials are made afresh by
// test/support/make-tls-creds.sh (certtool).
#include <algorithm>

#include "test_nbd_support.hpp"

using namespace nbdtest;

namespace {

bool have_tools(boost::unit_test::test_unit_id) {
    return have("certtool") && have("qemu-img") && have("qemu-io") && have("nbdinfo") && have("nbdcopy");
}

constexpr std::uint64_t mib = 1 << 20;

/// Fresh credentials in dir/creds (see make-tls-creds.sh for the layout).
std::string make_creds(const temp_dir& dir) {
    const std::string creds = dir / "creds";
    NBD_RUN_OK(dir.path(), {"bash", std::string(QED_TEST_SOURCE_DIR) + "/support/make-tls-creds.sh", creds});
    return creds;
}

std::vector<std::string> x509_server(const std::string& creds, const std::string& extra = "") {
    return {"-t", "--object", "tls-creds-x509,id=tls0,endpoint=server,dir=" + creds + "/server" + extra, "--tls-creds",
            "tls0"};
}

std::vector<std::string> psk_server(const std::string& creds) {
    return {"-t", "--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + creds + "/psk", "--tls-creds", "tls0"};
}

/// qemu's client side: --object ... --image-opts driver=nbd,...,tls-creds=tls0
/// ("qemu-img" runs "info"; for qemu-io, commands are inserted after argv[0]).
std::vector<std::string> qemu_tls(const std::string& tool, const std::string& object, std::uint16_t port) {
    std::vector<std::string> argv{tool};
    if (tool == "qemu-img") argv.push_back("info");
    argv.insert(argv.end(), {"--object", object, "--image-opts",
                             "driver=nbd,host=localhost,port=" + std::to_string(port) + ",tls-creds=tls0"});
    return argv;
}

std::string x509_client(const std::string& dir) {
    return "tls-creds-x509,id=tls0,endpoint=client,dir=" + dir;
}

std::string nbds(std::uint16_t port, const std::string& query, const std::string& user = "") {
    return "nbds://" + (user.empty() ? "" : user + "@") + "localhost:" + std::to_string(port) + "/?" + query;
}

/// Lines of the server's stderr that mention `needle`.
std::vector<std::string> lines_with(const std::string& text, const std::string& needle) {
    std::vector<std::string> out;
    std::stringstream ss(text);
    std::string line;
    while (std::getline(ss, line))
        if (line.find(needle) != std::string::npos) out.push_back(line);
    return out;
}

/// Run a client that must be refused: non-zero exit, and exactly one new
/// line in the server's log, naming the client address and `reason`.
void expect_refused(server& srv, const temp_dir& dir, const std::vector<std::string>& argv, const std::string& reason) {
    const std::size_t before = lines_with(srv.stderr_text(), "(127.0.0.1:").size();
    const auto r = run(argv, dir.path(), 30s);
    BOOST_CHECK_MESSAGE(r.status != 0 && r.status != -1, describe(argv, r));
    std::vector<std::string> lines;
    srv.wait_for_log([&](const std::string& log) {
        lines = lines_with(log, "(127.0.0.1:");
        return lines.size() > before;
    });
    BOOST_REQUIRE_MESSAGE(lines.size() == before + 1, "expected one new log line for: " << describe(argv, r)
                                                                                        << "\nserver log:\n"
                                                                                        << srv.stderr_text());
    BOOST_CHECK_MESSAGE(lines.back().find(reason) != std::string::npos,
                        "log line '" << lines.back() << "' does not give the reason '" << reason << "'");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(nbd_tls, *boost::unit_test::precondition(have_tools))

BOOST_AUTO_TEST_CASE(x509_with_qemu_and_libnbd_clients) {
    temp_dir dir("tls-x509");
    const std::string creds = make_creds(dir);
    const std::string image = dir / "disk.qed";
    create_qed(image, 16 * mib);
    const std::string src = dir / "src.raw";
    const std::string data = random_bytes(4 * mib, 7);
    write_file(src, data);

    server srv(dir);
    srv.start(x509_server(creds), image);
    const std::string client = x509_client(creds + "/client");
    // qemu-io writes a pattern over TLS and reads it back.
    auto io = qemu_tls("qemu-io", client, srv.port());
    io.insert(io.begin() + 1, {"-c", "write -P 0x5a 8M 1M", "-c", "read -P 0x5a 8M 1M"});
    const auto w = NBD_RUN_OK(dir.path(), io);
    BOOST_CHECK_MESSAGE(w.out.find("Pattern verification failed") == std::string::npos, w.out);
    // qemu-img converts a raw file into the export and compares it.
    NBD_RUN_OK(dir.path(), {"qemu-img", "convert", "-n", "-f", "raw", "--object", client, "--target-image-opts", src,
                            "driver=nbd,host=localhost,port=" + std::to_string(srv.port()) + ",tls-creds=tls0"});
    // libnbd: nbdinfo says TLS is in use, nbdcopy copies the export out.
    const std::string uri = nbds(srv.port(), "tls-certificates=" + creds + "/client");
    const auto info = NBD_RUN_OK(dir.path(), {"nbdinfo", uri});
    BOOST_CHECK_MESSAGE(info.out.find("with TLS") != std::string::npos, info.out);
    BOOST_CHECK(info.out.find("16777216") != std::string::npos);
    const std::string out = dir / "out.raw";
    NBD_RUN_OK(dir.path(), {"nbdcopy", uri, out});
    const std::string got = read_file(out);
    BOOST_REQUIRE_EQUAL(got.size(), 16 * mib);
    BOOST_CHECK(got.compare(0, data.size(), data) == 0);
    BOOST_CHECK(got.substr(8 * mib, mib) == std::string(mib, '\x5a'));
    // No refusal was logged for these clients.
    BOOST_CHECK_MESSAGE(lines_with(srv.stderr_text(), "(127.0.0.1:").empty(), srv.stderr_text());
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(image, 8 * mib, std::string(mib, '\x5a'));
}

BOOST_AUTO_TEST_CASE(x509_refusals_leave_one_line_and_the_image_alone) {
    temp_dir dir("tls-refuse");
    const std::string creds = make_creds(dir);
    const std::string image = dir / "disk.qed";
    create_qed(image, 4 * mib);
    write_image(image, 0, std::string(64 * 1024, 'a'));
    const std::string before = read_file(image);
    // A client directory with only the CA: no certificate of its own.
    fs::create_directories(dir / "nocert");
    fs::copy_file(creds + "/ca-cert.pem", dir / "nocert/ca-cert.pem");

    server srv(dir);
    srv.start(x509_server(creds), image);
    const auto port = srv.port();
    auto writer = [&](const std::string& object) {
        auto argv = qemu_tls("qemu-io", object, port);
        argv.insert(argv.begin() + 1, {"-c", "write -P 0x66 0 64k"});
        return argv;
    };
    // The client does not trust the server's CA: it hangs up in the handshake.
    expect_refused(srv, dir, {"nbdinfo", nbds(port, "tls-certificates=" + creds + "/client-wrongca")},
                   "TLS handshake failed");
    // No client certificate, though the server asks for one (verify-peer defaults to on, as in QEMU).
    expect_refused(srv, dir, writer(x509_client(dir / "nocert")), "peer did not return a certificate");
    // An expired client certificate (qemu refuses to use one; libnbd sends it).
    expect_refused(srv, dir, {"nbdinfo", nbds(port, "tls-certificates=" + creds + "/client-expired")},
                   "certificate has expired");
    // No TLS at all: NBD_REP_ERR_TLS_REQD to everything, from both client libraries.
    const auto plain = run(
        {"qemu-io", "-f", "raw", "-c", "write -P 0x66 0 64k", "nbd://127.0.0.1:" + std::to_string(port)}, dir.path());
    BOOST_CHECK_MESSAGE(plain.status != 0 && plain.err.find("TLS") != std::string::npos, plain.err);
    expect_refused(srv, dir, {"nbdinfo", "nbd://127.0.0.1:" + std::to_string(port)}, "did not start TLS");
    BOOST_CHECK_EQUAL(lines_with(srv.stderr_text(), "did not start TLS").size(), 2u);
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    BOOST_CHECK_MESSAGE(read_file(image) == before, "the image file changed");
}

BOOST_AUTO_TEST_CASE(x509_allow_list_of_client_names) {
    temp_dir dir("tls-authz");
    const std::string creds = make_creds(dir);
    const std::string image = dir / "disk.qed";
    create_qed(image, 4 * mib);
    const std::string before = read_file(image);

    for (const std::string identity : {"C=GB,,O=QED Test,,CN=client.test", "CN=client.test,,O=QED Test,,C=GB"}) {
        BOOST_TEST_CONTEXT("identity " << identity) {
            server srv(dir);
            auto args = x509_server(creds);
            args.insert(args.end(),
                        {"--object", "authz-simple,id=auth0,identity=" + identity, "--tls-authz", "auth0", "--object",
                         "authz-simple,id=auth1,identity=CN=nobody", "--tls-authz", "auth1", "-r"});
            srv.start(args, image);
            NBD_RUN_OK(dir.path(), qemu_tls("qemu-img", x509_client(creds + "/client"), srv.port()));
            NBD_RUN_OK(dir.path(), {"nbdinfo", nbds(srv.port(), "tls-certificates=" + creds + "/client")});
            expect_refused(srv, dir, qemu_tls("qemu-img", x509_client(creds + "/client-other"), srv.port()),
                           "'C=GB,O=QED Test,CN=other.test' is not allowed by --tls-authz");
            BOOST_CHECK_EQUAL(srv.stop(), 0);
        }
    }
    // verify-peer=off: a client without a certificate is served (no allow list).
    fs::create_directories(dir / "nocert");
    fs::copy_file(creds + "/ca-cert.pem", dir / "nocert/ca-cert.pem");
    server srv(dir);
    srv.start(x509_server(creds, ",verify-peer=off"), image);
    NBD_RUN_OK(dir.path(), qemu_tls("qemu-img", x509_client(dir / "nocert"), srv.port()));
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    BOOST_CHECK_MESSAGE(read_file(image) == before, "the image file changed");
}

BOOST_AUTO_TEST_CASE(psk_with_qemu_and_libnbd_clients) {
    temp_dir dir("tls-psk");
    const std::string creds = make_creds(dir);
    const std::string image = dir / "disk.qed";
    create_qed(image, 8 * mib);
    // qemu's PSK client reads DIR/keys.psk and needs the user name.
    fs::create_directories(dir / "qemu-alice");
    fs::copy_file(creds + "/psk/alice.psk", dir / "qemu-alice/keys.psk");
    const std::string alice = "tls-creds-psk,id=tls0,endpoint=client,dir=" + (dir / "qemu-alice") + ",username=alice";

    server srv(dir);
    srv.start(psk_server(creds), image);
    auto io = qemu_tls("qemu-io", alice, srv.port());
    io.insert(io.begin() + 1, {"-c", "write -P 0x33 1M 64k"});
    NBD_RUN_OK(dir.path(), io);
    // libnbd's PSK file is the same format; TLS 1.2 PSK suites interoperate too.
    const std::string out = dir / "out.raw";
    NBD_RUN_OK(dir.path(), {"nbdcopy", nbds(srv.port(), "tls-psk-file=" + creds + "/psk/keys.psk", "alice"), out});
    BOOST_CHECK(read_file(out).substr(mib, 64 * 1024) == std::string(64 * 1024, '\x33'));
    auto tls12 = qemu_tls("qemu-img", alice + ",priority=NORMAL:-VERS-TLS1.3:+ECDHE-PSK:+DHE-PSK:+PSK", srv.port());
    NBD_RUN_OK(dir.path(), tls12);

    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(image, mib, std::string(64 * 1024, '\x33'));
    const std::string before = read_file(image);

    // An allow list of PSK users: carol has a key but is not allowed; bob
    // is unknown; a wrong key for alice fails the handshake.
    server only_alice(dir);
    auto args = psk_server(creds);
    args.insert(args.end(), {"--object", "authz-simple,id=a,identity=alice", "--tls-authz", "a"});
    only_alice.start(args, image);
    const auto port = only_alice.port();
    NBD_RUN_OK(dir.path(), {"nbdinfo", nbds(port, "tls-psk-file=" + creds + "/psk/keys.psk", "alice")});
    fs::create_directories(dir / "qemu-bob");
    fs::copy_file(creds + "/psk-bob/keys.psk", dir / "qemu-bob/keys.psk");
    auto bob =
        qemu_tls("qemu-io", "tls-creds-psk,id=tls0,endpoint=client,dir=" + (dir / "qemu-bob") + ",username=bob", port);
    bob.insert(bob.begin() + 1, {"-c", "write -P 0x44 0 64k"});
    expect_refused(only_alice, dir, bob, "unknown PSK user 'bob'");
    expect_refused(only_alice, dir, {"nbdinfo", nbds(port, "tls-psk-file=" + creds + "/psk-bob/keys.psk", "bob")},
                   "unknown PSK user 'bob'");
    expect_refused(only_alice, dir,
                   {"nbdinfo", nbds(port, "tls-psk-file=" + creds + "/psk-alice-wrong/keys.psk", "alice")},
                   "TLS handshake failed");
    expect_refused(only_alice, dir, {"nbdinfo", nbds(port, "tls-psk-file=" + creds + "/psk/keys.psk", "carol")},
                   "PSK user 'carol' is not allowed by --tls-authz");
    BOOST_CHECK_EQUAL(only_alice.stop(), 0);
    BOOST_CHECK_MESSAGE(read_file(image) == before, "the image file changed");
}

BOOST_AUTO_TEST_CASE(bad_tls_options_are_refused_at_start) {
    temp_dir dir("tls-options");
    const std::string creds = make_creds(dir);
    const std::string image = dir / "disk.qed";
    create_qed(image, mib);
    server srv(dir);
    struct bad {
        std::vector<std::string> args;
        std::string message;
    };
    const std::vector<bad> cases = {
        {{"--object", "tls-creds-x509,id=t,endpoint=server,dir=" + (dir / "nowhere"), "--tls-creds", "t"},
         "ca-cert.pem: cannot read it"},
        {{"--object", "tls-creds-psk,id=t,endpoint=server,dir=" + (dir / "nowhere"), "--tls-creds", "t"},
         "keys.psk: cannot open the PSK file"},
        {{"--object", "tls-creds-x509,id=t,endpoint=client,dir=" + creds + "/server", "--tls-creds", "t"},
         "endpoint must be 'server'"},
        {{"--tls-creds", "t"}, "no tls-creds-x509 or tls-creds-psk object with id 't'"},
        {{"--object", "tls-creds-x509,id=t,endpoint=server,dir=" + creds + "/server", "--tls-creds", "t", "--tls-authz",
          "a"},
         "no authz-simple object with id 'a'"},
        {{"--object", "authz-simple,id=a,identity=x", "--tls-authz", "a"}, "--tls-authz is not allowed without"},
        {{"--object", "tls-creds-x509,id=t,endpoint=server,dir=" + creds + "/server,verify-peer=maybe"},
         "verify-peer must be on or off"},
        {{"--object", "secret,id=s,data=x"}, "unsupported object type 'secret'"},
    };
    // A key that does not go with the certificate.
    fs::create_directories(dir / "mismatch");
    for (const char* f : {"ca-cert.pem", "server-cert.pem"})
        fs::copy_file(creds + "/server/" + f, dir / ("mismatch/" + std::string(f)));
    fs::copy_file(creds + "/client/client-key.pem", dir / "mismatch/server-key.pem");
    auto all = cases;
    all.push_back({{"--object", "tls-creds-x509,id=t,endpoint=server,dir=" + (dir / "mismatch"), "--tls-creds", "t"},
                   "server-key.pem: not a usable private key"});
    for (const auto& c : all) {
        BOOST_TEST_CONTEXT(c.message) {
            const auto [status, err] = srv.start_failing(c.args, image);
            BOOST_CHECK_EQUAL(status, 1);
            BOOST_CHECK_MESSAGE(err.find(c.message) != std::string::npos, err);
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()
