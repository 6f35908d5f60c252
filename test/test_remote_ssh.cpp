// SPDX-License-Identifier: BSL-1.0
// Images on an SSH server: the libssh block file against a real sshd
// started here (its own config, a throwaway host key and user key in the
// test's directory, on a loopback port), through the library, the tools
// (qed-img, qed-io) and QEMU's own ssh driver (qemu-img, qemu-io) reading
// and writing the same files. Authentication goes through an ssh-agent of
// the test's own (SSH_AUTH_SOCK); the known_hosts cases run the tools in a
// private mount namespace whose home directory holds known_hosts and the
// default key, so the real ~/.ssh is never read or written.
#include <pwd.h>
#include <sys/socket.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "qed/block_file.hpp"
#include "qed/image.hpp"
#include "test_nbd_support.hpp"

using namespace nbdtest;

namespace {

std::string tool(const std::string& name) {
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    return (self.parent_path().parent_path() / "src" / "tools" / name).string();
}

const char* const sshd_binary = "/usr/sbin/sshd";

/// sshd needs root here (it switches to the user it authenticates), and
/// the key tools and QEMU's ssh driver.
bool have_ssh(boost::unit_test::test_unit_id) {
    return ::geteuid() == 0 && ::access(sshd_binary, X_OK) == 0 && have("ssh-keygen") && have("ssh-agent") &&
           have("ssh-add") && have("qemu-img") && have("qemu-io");
}

/// Whether a private mount namespace can be made (unshare -m).
bool have_unshare(boost::unit_test::test_unit_id id) {
    if (!have_ssh(id) || !have("unshare")) return false;
    temp_dir d("ssh-unshare");
    return run({"unshare", "-m", "true"}, d.path(), 20s).status == 0;
}

std::string first_line(const std::string& s) {
    return s.substr(0, s.find('\n'));
}

/// An error line without the program name in front ("qed-img: " / "qemu-img: ").
std::string without_program(const std::string& err) {
    const std::string line = first_line(err);
    const auto colon = line.find(": ");
    return colon == std::string::npos ? line : line.substr(colon + 2);
}

/// Bytes of a standard base64 text (no line breaks; '=' padding).
std::string base64_decode(const std::string& in) {
    static const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    unsigned bits = 0, value = 0;
    for (char c : in) {
        const auto at = alphabet.find(c);
        if (at == std::string::npos) break;
        value = (value << 6) | static_cast<unsigned>(at);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((value >> bits) & 0xff);
        }
    }
    return out;
}

std::string hex(const std::string& bytes) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

/// An sshd on 127.0.0.1 (a free port), with a fresh ed25519 host key, a
/// user key accepted for every user, the internal SFTP server, and an
/// ssh-agent holding the user key (SSH_AUTH_SOCK points at it for this
/// process and the tools it runs). Everything is killed at the end.
class ssh_server {
public:
    ssh_server() : dir_("ssh") {
        keygen("host_key");
        keygen("user_key");
        fs::copy_file(dir_ / "user_key.pub", dir_ / "authorized_keys");
        // sshd refuses to start without its privilege separation directory
        // (what the Debian service creates at boot).
        std::error_code ec;
        fs::create_directories("/run/sshd", ec);
        for (int attempt = 0; attempt < 5 && !start_sshd(); ++attempt) {
        }
        BOOST_REQUIRE_MESSAGE(listening(), "sshd did not start: " << read_file(dir_ / "sshd.err"));
        agent_.start({"ssh-agent", "-D", "-a", dir_ / "agent.sock"}, dir_ / "agent.out", dir_ / "agent.err");
        const auto until = std::chrono::steady_clock::now() + 15s;
        while (!fs::exists(dir_ / "agent.sock")) {
            BOOST_REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until && !agent_.poll(),
                                  "ssh-agent did not start: " << read_file(dir_ / "agent.err"));
            std::this_thread::sleep_for(5ms);
        }
        ::setenv("SSH_AUTH_SOCK", (dir_ / "agent.sock").c_str(), 1);
        NBD_RUN_OK(dir_.path(), {"ssh-add", "-q", dir_ / "user_key"});
    }
    ~ssh_server() { ::unsetenv("SSH_AUTH_SOCK"); }

    const temp_dir& dir() const { return dir_; }
    std::uint16_t port() const { return port_; }
    std::string port_text() const { return std::to_string(port_); }

    /// ssh://127.0.0.1:PORT/DIR/NAME, host key not checked unless `check` says how.
    std::string uri(const std::string& name, const std::string& check = "no") const {
        return "ssh://127.0.0.1:" + port_text() + (dir_ / name) + (check.empty() ? "" : "?host_key_check=" + check);
    }
    /// QEMU's name for the same file.
    std::string exact(const std::string& name, const std::string& check = "no") const {
        return "ssh://" + user() + "@127.0.0.1:" + port_text() + (dir_ / name) +
               (check.empty() ? "" : "?host_key_check=" + check);
    }
    static std::string user() { return ::getpwuid(::getuid())->pw_name; }

    /// The host key's fingerprint: "MD5:aa:bb:..." or "SHA256:base64" as ssh-keygen prints it.
    std::string fingerprint(const std::string& hash) const {
        const auto r = NBD_RUN_OK(dir_.path(), {"ssh-keygen", "-l", "-E", hash, "-f", dir_ / "host_key.pub"});
        std::istringstream ss(r.out);
        std::string bits, fp;
        ss >> bits >> fp;
        return fp;
    }
    /// The host key's SHA-256 as lowercase hex (QEMU's host-key-check hash).
    std::string sha256_hex() const { return hex(base64_decode(fingerprint("sha256").substr(7))); }
    /// The host key line for known_hosts ("[127.0.0.1]:PORT TYPE BASE64").
    std::string known_hosts_line(const std::string& pub = "host_key.pub") const {
        std::istringstream ss(read_file(dir_ / pub));
        std::string type, key;
        ss >> type >> key;
        return "[127.0.0.1]:" + port_text() + " " + type + " " + key + "\n";
    }

    void keygen(const std::string& name) const {
        NBD_RUN_OK(dir_.path(), {"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qed-test", "-f", dir_ / name});
    }

private:
    bool start_sshd() {
        port_ = free_port();
        write_file(dir_ / "sshd_config", "Port " + port_text() +
                                             "\n"
                                             "ListenAddress 127.0.0.1\n"
                                             "HostKey " +
                                             (dir_ / "host_key") +
                                             "\n"
                                             "PidFile none\n"
                                             "AuthorizedKeysFile " +
                                             (dir_ / "authorized_keys") +
                                             "\n"
                                             "StrictModes no\n"
                                             "UsePAM no\n"
                                             "PasswordAuthentication no\n"
                                             "KbdInteractiveAuthentication no\n"
                                             "PermitRootLogin prohibit-password\n"
                                             "Subsystem sftp internal-sftp\n");
        sshd_.kill_hard();
        sshd_.start({sshd_binary, "-D", "-e", "-f", dir_ / "sshd_config"}, dir_ / "sshd.out", dir_ / "sshd.err");
        const auto until = std::chrono::steady_clock::now() + 15s;
        while (std::chrono::steady_clock::now() < until) {
            if (sshd_.poll()) return false;  // (the port was taken meanwhile: another one)
            if (listening()) return true;
            std::this_thread::sleep_for(10ms);
        }
        return false;
    }
    bool listening() const {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(port_);
        const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
        ::close(fd);
        return ok;
    }

    temp_dir dir_;
    child sshd_;
    child agent_;
    std::uint16_t port_ = 0;
};

/// A command in a private mount namespace whose home directory is `home`
/// (bind-mounted over the real one), so ~/.ssh is the test's.
std::vector<std::string> with_home(const std::string& home, std::vector<std::string> argv) {
    const std::string script = "mount --bind \"$1\" \"$2\" && shift 2 && exec \"$@\"";
    std::vector<std::string> out{"unshare", "-m", "sh", "-c", script, "sh", home};
    out.emplace_back(::getpwuid(::getuid())->pw_dir);
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(remote_ssh, *boost::unit_test::precondition(have_ssh))

// The block file itself: scattered writes inside and past the end (the
// file grows), reads across the end (zeros), setstat resizes both ways,
// fsync@openssh.com, a read-only open refusing writes; the bytes checked
// in the file the server wrote; handlers never inside the initiating call.
BOOST_AUTO_TEST_CASE(block_file_over_sftp) {
    ssh_server srv;
    boost::asio::io_context ioc;
    std::vector<std::string> logs;
    qed::file_options fo;
    fo.read_only = false;
    fo.create = true;
    fo.log = [&](std::string_view l) { logs.emplace_back(l); };
    std::error_code ec;
    const std::string name = srv.uri("bf.raw");
    BOOST_CHECK(qed::is_remote_name(name));
    auto f = qed::open_file(ioc.get_executor(), name, fo, ec);
    BOOST_REQUIRE_MESSAGE(f, ec.message() << " " << (logs.empty() ? "" : logs.back()));
    BOOST_CHECK_EQUAL(std::string(f->backend_name()), "ssh");
    BOOST_CHECK_EQUAL(f->size(ec), 0u);
    BOOST_CHECK(fs::exists(srv.dir() / "bf.raw"));

    // 100 bytes + 200 KiB + 3 bytes at 5000: more than one SFTP request.
    const std::string data = random_bytes(100 + (200 << 10) + 3, 11);
    const std::size_t cuts[] = {0, 100, 100 + (200 << 10), data.size()};
    std::vector<boost::asio::const_buffer> wb;
    for (int i = 0; i < 3; ++i) wb.emplace_back(data.data() + cuts[i], cuts[i + 1] - cuts[i]);
    bool returned = false;
    bool inline_call = false;
    std::optional<std::tuple<std::error_code, std::size_t>> wr;
    f->async_write_at(5000, wb, [&](boost::system::error_code e, std::size_t n) {
        inline_call = !returned;
        wr.emplace(e, n);
    });
    returned = true;
    while (!wr && ioc.run_one()) {
    }
    ioc.restart();
    BOOST_REQUIRE(wr);
    BOOST_CHECK(!inline_call);
    BOOST_REQUIRE_MESSAGE(!std::get<0>(*wr), std::get<0>(*wr).message());
    BOOST_CHECK_EQUAL(std::get<1>(*wr), data.size());
    BOOST_CHECK_EQUAL(f->size(ec), 5000 + data.size());
    auto [fec] = await<std::error_code>(ioc, [&](auto h) { f->async_flush(qed::op_handler(std::move(h))); });
    BOOST_CHECK(!fec);
    const std::string on_disk = read_file(srv.dir() / "bf.raw");
    BOOST_REQUIRE_EQUAL(on_disk.size(), 5000 + data.size());
    BOOST_CHECK(on_disk.substr(0, 5000) == std::string(5000, '\0'));
    BOOST_CHECK(on_disk.substr(5000) == data);

    // Read in other pieces, 8 KiB past the end: zeros there.
    std::string back(data.size() + 8192, '\x55');
    std::vector<boost::asio::mutable_buffer> rb;
    const std::size_t rcuts[] = {0, 7, 70000, back.size()};
    for (int i = 0; i < 3; ++i) rb.emplace_back(back.data() + rcuts[i], rcuts[i + 1] - rcuts[i]);
    auto [rec, rn] = await<std::error_code, std::size_t>(
        ioc, [&](auto h) { f->async_read_at(5000, rb, qed::io_handler(std::move(h))); });
    BOOST_REQUIRE_MESSAGE(!rec, rec.message());
    BOOST_CHECK_EQUAL(rn, back.size());
    BOOST_CHECK(back.substr(0, data.size()) == data);
    BOOST_CHECK(back.substr(data.size()) == std::string(8192, '\0'));

    // Resize: grow (zeros), then shrink below what was written.
    auto [g] = await<std::error_code>(ioc, [&](auto h) { f->async_resize(1 << 20, qed::op_handler(std::move(h))); });
    BOOST_REQUIRE_MESSAGE(!g, g.message());
    BOOST_CHECK_EQUAL(f->size(ec), 1u << 20);
    BOOST_CHECK_EQUAL(fs::file_size(srv.dir() / "bf.raw"), 1u << 20);
    auto [s] = await<std::error_code>(ioc, [&](auto h) { f->async_resize(6000, qed::op_handler(std::move(h))); });
    BOOST_REQUIRE_MESSAGE(!s, s.message());
    BOOST_CHECK_EQUAL(f->size(ec), 6000u);
    BOOST_CHECK(read_file(srv.dir() / "bf.raw") == on_disk.substr(0, 6000));
    auto [cec] = await<std::error_code>(ioc, [&](auto h) { f->async_close(qed::op_handler(std::move(h))); });
    BOOST_CHECK(!cec);
    f.reset();

    // Read-only: reads work, writes and resizes fail with EBADF.
    qed::file_options ro;
    ro.log = fo.log;
    auto r = qed::open_file(ioc.get_executor(), name, ro, ec);
    BOOST_REQUIRE_MESSAGE(r, ec.message());
    BOOST_CHECK(r->read_only());
    BOOST_CHECK_EQUAL(r->size(ec), 6000u);
    auto [wec, wn] = await<std::error_code, std::size_t>(
        ioc, [&](auto h) { r->async_write_at(0, wb, qed::io_handler(std::move(h))); });
    BOOST_CHECK(wec == std::error_code(EBADF, std::system_category()));
    auto [rzec] = await<std::error_code>(ioc, [&](auto h) { r->async_resize(0, qed::op_handler(std::move(h))); });
    BOOST_CHECK(rzec == std::error_code(EBADF, std::system_category()));
    BOOST_CHECK_EQUAL(fs::file_size(srv.dir() / "bf.raw"), 6000u);
}

// qed-img creates the image over SSH and qed-io writes it; QEMU's ssh
// driver reads the same bytes, finds it clean and describes it as we do.
BOOST_AUTO_TEST_CASE(ours_write_qemu_reads) {
    ssh_server srv;
    const auto& dir = srv.dir();
    const std::string img = srv.uri("a.qed");
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "create", "-q", "-f", "qed", img, "64M"});
    BOOST_CHECK(fs::exists(dir / "a.qed"));
    NBD_RUN_OK(dir.path(), {tool("qed-io"), "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x33 40M 64k", img});
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "read -P 0x5a 0 1M", "-c", "read -P 0x33 40M 64k", "-c",
                            "read -P 0 1M 64k", img});
    const auto qcheck = NBD_RUN_OK(dir.path(), {"qemu-img", "check", "-f", "qed", img});
    BOOST_CHECK_MESSAGE(qcheck.out.find("No errors were found on the image.") != std::string::npos, qcheck.out);
    const auto ours = NBD_RUN_OK(dir.path(), {tool("qed-img"), "info", img});
    const auto theirs = NBD_RUN_OK(dir.path(), {"qemu-img", "info", img});
    // Same name (QEMU's: user and port filled in), format and size.
    BOOST_CHECK_EQUAL(first_line(ours.out), "image: " + srv.exact("a.qed"));
    BOOST_CHECK_EQUAL(first_line(ours.out), first_line(theirs.out));
    BOOST_CHECK_MESSAGE(ours.out.find("virtual size: 64 MiB (67108864 bytes)") != std::string::npos, ours.out);
    BOOST_CHECK_MESSAGE(theirs.out.find("file format: qed") != std::string::npos, theirs.out);
    // The local file the server wrote is the same image.
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "qed", "-F", "qed", dir / "a.qed", img});
}

// QEMU creates and writes over SSH; ours reads, checks, compares and
// converts it, and writes more that QEMU then reads.
BOOST_AUTO_TEST_CASE(qemu_writes_ours_reads) {
    ssh_server srv;
    const auto& dir = srv.dir();
    const std::string img = srv.uri("q.qed");
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", img, "16M"});
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "write -P 0x11 64k 192k", "-c", "write -P 0x22 8M 4k", img});
    NBD_RUN_OK(dir.path(), {tool("qed-io"), "-f", "qed", "-c", "read -P 0x11 64k 192k", "-c", "read -P 0x22 8M 4k",
                            "-c", "read -P 0 0 64k", img});
    const auto check = NBD_RUN_OK(dir.path(), {tool("qed-img"), "check", img});
    BOOST_CHECK_MESSAGE(check.out.find("No errors were found on the image.") != std::string::npos, check.out);
    // Down to a local raw file and back up as a new QED image.
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "convert", "-O", "raw", img, dir / "local.raw"});
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "qed", "-F", "raw", img, dir / "local.raw"});
    const std::string copy = srv.uri("copy.qed");
    NBD_RUN_OK(dir.path(), {tool("qed-img"), "convert", "-O", "qed", dir / "local.raw", copy});
    NBD_RUN_OK(dir.path(), {"qemu-img", "compare", "-f", "raw", "-F", "qed", dir / "local.raw", copy});
    NBD_RUN_OK(dir.path(), {tool("qed-io"), "-f", "qed", "-c", "write -P 0x44 12M 512", img});
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "read -P 0x44 12M 512", "-c", "read -P 0x11 64k 192k", img});
}

// The library opens a json: tree with an ssh node (server.*, a SHA-256
// host key hash) and an --image-opts list with the legacy keys and an MD5
// hash written as ssh-keygen prints it; the image goes by QEMU's name.
BOOST_AUTO_TEST_CASE(node_options_and_host_key_hashes) {
    ssh_server srv;
    const auto& dir = srv.dir();
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", dir / "n.qed", "8M"});
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "write -P 0x77 0 64k", dir / "n.qed"});
    const std::string json =
        R"(json:{"driver": "qed", "file": {"driver": "ssh", "server": {"host": "127.0.0.1", "port": ")" +
        srv.port_text() + R"("}, "path": ")" + (dir / "n.qed") +
        R"(", "host-key-check": {"mode": "hash", "type": "sha256", "hash": ")" + srv.sha256_hex() + R"("}}})";
    image_lib l;
    auto [ec, img] = l.open(json);
    BOOST_REQUIRE_MESSAGE(!ec, ec.message() << "\n" << l.all_logs());
    BOOST_CHECK_EQUAL(img.info().filename, srv.exact("n.qed", ""));
    BOOST_CHECK(l.read(img, 0, 65536) == std::string(65536, '\x77'));
    BOOST_CHECK(!l.write(img, 1 << 20, std::string(4096, '\x78')));
    l.close(img);
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "read -P 0x78 1M 4k", dir / "n.qed"});

    // MD5 with colons, as ssh-keygen -E md5 prints it (after "MD5:").
    const std::string md5 = srv.fingerprint("md5").substr(4);
    const std::string opts = "driver=qed,file.driver=ssh,file.host=127.0.0.1,file.port=" + srv.port_text() +
                             ",file.path=" + (dir / "n.qed") + ",file.host_key_check=md5:" + md5;
    const auto ours = NBD_RUN_OK(dir.path(), {tool("qed-img"), "info", "--image-opts", opts});
    const auto theirs = NBD_RUN_OK(dir.path(), {"qemu-img", "info", "--image-opts", opts});
    BOOST_CHECK_EQUAL(first_line(ours.out), "image: " + srv.exact("n.qed", "md5:" + md5));
    BOOST_CHECK_EQUAL(first_line(ours.out), first_line(theirs.out));
    NBD_RUN_OK(dir.path(), {tool("qed-io"), "--image-opts", "-c", "read -P 0x77 0 64k", opts});
}

// A host key that is not the one asked for is refused before anything is
// read, with QEMU's words; so are an unknown host_key_check setting and
// malformed names. Each line is qemu-img's after the program name.
BOOST_AUTO_TEST_CASE(refusals_in_qemu_words) {
    ssh_server srv;
    const auto& dir = srv.dir();
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", dir / "r.qed", "8M"});
    const std::string path = dir / "r.qed";
    const std::string p = srv.port_text();
    const std::vector<std::vector<std::string>> cases = {
        {"info", srv.uri("r.qed", "sha1:0011223344")},
        {"info", srv.uri("r.qed", "sha256:" + std::string(64, '0'))},
        {"info", srv.uri("r.qed", "bogus")},
        {"info", "ssh:///r.qed"},
        {"info", "ssh://127.0.0.1:" + p},
        {"info", srv.uri("missing.qed")},
        {"info", "json:{\"driver\": \"ssh\", \"host\": \"127.0.0.1\", \"port\": 0.42, \"path\": \"" + path + "\"}"},
        {"info", "--image-opts", "driver=ssh,host=127.0.0.1,port=0.42,path=" + path},
        {"info", "json:{\"driver\": \"ssh\", \"server\": {\"host\": \"127.0.0.1\", \"port\": \"x" + p +
                     "\"}, \"path\": \"" + path + "\"}"},
        {"info", "json:{\"driver\": \"ssh\", \"port\": \"" + p + "\", \"path\": \"" + path + "\"}"},
        {"info", "json:{\"driver\": \"ssh\", \"host\": \"127.0.0.1\"}"},
        {"info", "json:{\"driver\": \"ssh\", \"host\": \"127.0.0.1\", \"path\": \"/x\", \"bogus\": 1}"},
        {"info",
         "json:{\"driver\": \"qed\", \"file\": {\"driver\": \"ssh\", \"server\": {\"host\": \"127.0.0.1\", "
         "\"port\": \"" +
             p + "\"}, \"path\": \"" + path + "\", \"host-key-check\": {\"mode\": \"hash\", \"type\": \"sha1\"}}}"},
    };
    for (const auto& args : cases) {
        std::vector<std::string> ours{tool("qed-img")}, theirs{"qemu-img"};
        ours.insert(ours.end(), args.begin(), args.end());
        theirs.insert(theirs.end(), args.begin(), args.end());
        const auto a = run(ours, dir.path());
        const auto b = run(theirs, dir.path());
        BOOST_TEST_INFO(args.back());
        BOOST_CHECK_EQUAL(a.status, 1);
        BOOST_TEST_INFO(args.back());
        BOOST_CHECK_EQUAL(b.status, 1);
        BOOST_TEST_INFO(args.back());
        BOOST_CHECK_EQUAL(without_program(a.err), without_program(b.err));
        BOOST_CHECK_MESSAGE(a.err.rfind("qed-img: Could not open '", 0) == 0, a.err);
    }
    // The mismatch line names the key the server really has.
    const auto m = run({tool("qed-img"), "info", srv.uri("r.qed", "sha256:00")}, dir.path());
    BOOST_CHECK_MESSAGE(
        m.err.find("key fingerprint 'sha256:" + srv.sha256_hex() + "' does not match") != std::string::npos, m.err);
    // qed-io says it as qemu-io does.
    const auto io = run({tool("qed-io"), "-c", "read 0 512", srv.uri("r.qed", "sha1:00")}, dir.path());
    const auto qio = run({"qemu-io", "-c", "read 0 512", srv.uri("r.qed", "sha1:00")}, dir.path());
    BOOST_CHECK_EQUAL(io.status, 1);
    BOOST_CHECK_EQUAL(without_program(io.err), without_program(qio.err));
    // Through the library: the error code, and one line.
    image_lib l;
    auto [ec, img] = l.open(srv.uri("r.qed", "sha1:00"));
    BOOST_CHECK(ec == std::error_code(EPERM, std::system_category()));
    BOOST_CHECK_EQUAL(l.logs.size(), 1u);
}

// Nothing listens on the port: QEMU's "Failed to connect" line, the error
// code through the library; a name that does not resolve: its line too.
BOOST_AUTO_TEST_CASE(connection_refused) {
    temp_dir dir("ssh-refused");
    const std::string port = std::to_string(free_port());
    const std::string json =
        R"(json:{"driver": "ssh", "host": "127.0.0.1", "port": ")" + port + R"(", "path": "/foo"})";
    const auto a = run({tool("qed-img"), "info", json}, dir.path());
    const auto b = run({"qemu-img", "info", json}, dir.path());
    BOOST_CHECK_EQUAL(a.status, 1);
    BOOST_CHECK_EQUAL(a.err, "qed-img: Could not open '" + json + "': Failed to connect to '127.0.0.1:" + port +
                                 "': Connection refused\n");
    BOOST_CHECK_EQUAL(without_program(a.err), without_program(b.err));
    const std::string opts = "driver=ssh,host=no.such.host.invalid,path=/foo";
    const auto c = run({tool("qed-img"), "info", "--image-opts", opts}, dir.path());
    const auto d = run({"qemu-img", "info", "--image-opts", opts}, dir.path());
    BOOST_CHECK_EQUAL(c.status, 1);
    BOOST_CHECK_MESSAGE(c.err.find("address resolution failed for no.such.host.invalid:22") != std::string::npos,
                        c.err);
    BOOST_CHECK_EQUAL(without_program(c.err), without_program(d.err));

    image_lib l;
    auto [ec, img] = l.open("ssh://127.0.0.1:" + port + "/foo");
    BOOST_CHECK(ec == std::error_code(ECONNREFUSED, std::system_category()));
    BOOST_REQUIRE_EQUAL(l.logs.size(), 1u);
    BOOST_CHECK_EQUAL(l.logs[0], "ssh://127.0.0.1:" + port + "/foo: Failed to connect to '127.0.0.1:" + port +
                                     "': Connection refused");
}

// A server that accepts the connection and never speaks: the open waits on
// the blocking pool, and the io_context goes on running other work (a
// timer fires) until the server goes away and the open fails.
BOOST_AUTO_TEST_CASE(connecting_does_not_block_the_io_context) {
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    BOOST_REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    BOOST_REQUIRE(::listen(listener, 4) == 0);
    socklen_t len = sizeof a;
    ::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len);
    const std::string port = std::to_string(ntohs(a.sin_port));

    boost::asio::io_context ioc;
    std::optional<std::error_code> opened;
    qed::open_options o;
    o.read_only = true;
    const std::string names[] = {"ssh://127.0.0.1:" + port + "/x?host_key_check=no",
                                 R"(json:{"driver": "ssh", "host": "127.0.0.1", "port": ")" + port +
                                     R"(", "path": "/x", "host_key_check": "no"})"};
    for (const auto& name : names) {
        BOOST_TEST_INFO(name);
        opened.reset();
        qed::image::async_open(ioc.get_executor(), name, o,
                               [&](boost::system::error_code ec, qed::image) { opened = ec; });
        bool fired = false;
        boost::asio::steady_timer t(ioc, 200ms);
        t.async_wait([&](boost::system::error_code) { fired = true; });
        ioc.restart();
        while (!fired && ioc.run_one()) {
        }
        BOOST_CHECK(fired);
        BOOST_CHECK(!opened);  // still connecting
        if (&name == &names[1]) continue;
        // Let this one's connection go: accept and close it.
        const int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        BOOST_REQUIRE(c >= 0);
        ::close(c);
        ioc.restart();
        while (!opened && ioc.run_one()) {
        }
        BOOST_REQUIRE(opened);
        BOOST_CHECK(*opened);
    }
    // The server goes away: the second open fails too.
    ::close(listener);
    ioc.restart();
    while (!opened && ioc.run_one()) {
    }
    BOOST_REQUIRE(opened);
    BOOST_CHECK(*opened);
}

BOOST_AUTO_TEST_SUITE_END()

// known_hosts (the default check) and the default key (~/.ssh/id_*, no
// agent), in a private mount namespace whose home is the test's: the
// matching entry opens, another key for the host is an attack refused, a
// host missing from the file is refused; every line as qemu-img's.
BOOST_AUTO_TEST_SUITE(remote_ssh_known_hosts, *boost::unit_test::precondition(have_unshare))

BOOST_AUTO_TEST_CASE(known_hosts_and_default_key) {
    ssh_server srv;
    const auto& dir = srv.dir();
    NBD_RUN_OK(dir.path(), {"qemu-img", "create", "-q", "-f", "qed", dir / "k.qed", "8M"});
    NBD_RUN_OK(dir.path(), {"qemu-io", "-f", "qed", "-c", "write -P 0x6b 0 4k", dir / "k.qed"});
    const std::string home = dir / "home";
    fs::create_directories(home + "/.ssh");
    fs::copy_file(dir / "user_key", home + "/.ssh/id_ed25519");
    fs::permissions(home + "/.ssh/id_ed25519", fs::perms::owner_read | fs::perms::owner_write);
    const std::string img = srv.uri("k.qed", "");
    auto both = [&](const std::vector<std::string>& args) {
        std::vector<std::string> ours{"env", "-u", "SSH_AUTH_SOCK", tool("qed-img")},
            theirs{"env", "-u", "SSH_AUTH_SOCK", "qemu-img"};
        ours.insert(ours.end(), args.begin(), args.end());
        theirs.insert(theirs.end(), args.begin(), args.end());
        return std::pair{run(with_home(home, ours), dir.path()), run(with_home(home, theirs), dir.path())};
    };

    write_file(home + "/.ssh/known_hosts", srv.known_hosts_line());
    auto [ok, qok] = both({"info", img});
    BOOST_CHECK_MESSAGE(ok.status == 0, ok.err);
    BOOST_CHECK_EQUAL(first_line(ok.out), "image: " + srv.exact("k.qed", ""));
    BOOST_CHECK_EQUAL(first_line(ok.out), first_line(qok.out));
    const auto io = run(with_home(home, {"env", "-u", "SSH_AUTH_SOCK", tool("qed-io"), "-c", "read -P 0x6b 0 4k", img}),
                        dir.path());
    BOOST_CHECK_MESSAGE(io.status == 0, io.err);

    srv.keygen("other_key");
    write_file(home + "/.ssh/known_hosts", srv.known_hosts_line("other_key.pub"));
    auto [bad, qbad] = both({"info", img});
    BOOST_CHECK_EQUAL(bad.status, 1);
    BOOST_CHECK_EQUAL(bad.err, "qed-img: Could not open '" + img + "': host key (ssh-ed25519 key with fingerprint " +
                                   srv.fingerprint("sha256") +
                                   ") does not match the one in known_hosts; this may be a possible attack\n");
    BOOST_CHECK_EQUAL(without_program(bad.err), without_program(qbad.err));

    write_file(home + "/.ssh/known_hosts", "");
    auto [none, qnone] = both({"info", img});
    BOOST_CHECK_EQUAL(none.status, 1);
    BOOST_CHECK_EQUAL(without_program(none.err), "Could not open '" + img + "': no host key was found in known_hosts");
    BOOST_CHECK_EQUAL(without_program(none.err), without_program(qnone.err));

    // Without the key (and no agent): QEMU's line about authentication.
    write_file(home + "/.ssh/known_hosts", srv.known_hosts_line());
    fs::remove(home + "/.ssh/id_ed25519");
    auto [noauth, qnoauth] = both({"info", img});
    BOOST_CHECK_EQUAL(noauth.status, 1);
    BOOST_CHECK_MESSAGE(noauth.err.find("failed to authenticate using publickey authentication") != std::string::npos,
                        noauth.err);
    BOOST_CHECK_EQUAL(without_program(noauth.err), without_program(qnoauth.err));
}

BOOST_AUTO_TEST_SUITE_END()
