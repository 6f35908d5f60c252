// SPDX-License-Identifier: BSL-1.0
// qed-nbd at the protocol level, with a minimal client on raw sockets:
// the handshake as the NBD document describes it, the replies to good and
// bad requests, limits, many requests in flight, clients that misbehave or
// vanish, shutdown by signal. The server runs as a child process; the image
// is checked with the library afterwards.
#include <poll.h>
#include <sys/un.h>

#include <map>

#include "qed/version.hpp"
#include "server/nbd_protocol.hpp"
#include "test_nbd_support.hpp"

namespace nbd = qed::nbd;
using namespace nbdtest;

namespace {

// ---------------------------------------------------------------------------
// A minimal NBD client
// ---------------------------------------------------------------------------

using bytes = std::vector<std::byte>;

bytes to_bytes(const std::string& s) {
    bytes b(s.size());
    if (!s.empty()) std::memcpy(b.data(), s.data(), s.size());  // data() of an empty vector may be null
    return b;
}
std::string to_string(const bytes& b) {
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

void add16(bytes& b, std::uint16_t v) {
    b.resize(b.size() + 2);
    nbd::put16(b.data() + b.size() - 2, v);
}
void add32(bytes& b, std::uint32_t v) {
    b.resize(b.size() + 4);
    nbd::put32(b.data() + b.size() - 4, v);
}
void add_str(bytes& b, const std::string& s) {
    const auto x = to_bytes(s);
    b.insert(b.end(), x.begin(), x.end());
}

struct option_reply {
    std::uint32_t option = 0;
    std::uint32_t type = 0;
    bytes data;
};

struct reply {
    bool structured = false;
    std::uint16_t flags = 0;  // structured only
    std::uint16_t type = 0;   // structured only
    std::uint64_t cookie = 0;
    std::uint32_t error = 0;  // simple reply error, or error chunk's error
    bytes payload;            // read data (simple) or chunk payload (structured)
};

class client {
public:
    explicit client(const server& s) {
        if (!s.socket_path().empty()) {
            fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            sockaddr_un a{};
            a.sun_family = AF_UNIX;
            std::strncpy(a.sun_path, s.socket_path().c_str(), sizeof a.sun_path - 1);
            BOOST_REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        } else {
            fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            a.sin_port = htons(s.port());
            BOOST_REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        }
        timeval tv{10, 0};  // no test hangs on a silent server
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    ~client() {
        if (fd_ >= 0) ::close(fd_);
    }
    client(const client&) = delete;
    client& operator=(const client&) = delete;

    void send(const void* p, std::size_t n) {
        const auto* c = static_cast<const char*>(p);
        while (n) {
            const ssize_t w = ::send(fd_, c, n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            BOOST_REQUIRE_MESSAGE(w > 0, "send failed: " << std::strerror(errno));
            c += w;
            n -= static_cast<std::size_t>(w);
        }
    }
    void send(const bytes& b) { send(b.data(), b.size()); }

    /// All `n` bytes, or false at end of stream.
    bool recv(void* p, std::size_t n) {
        auto* c = static_cast<char*>(p);
        while (n) {
            const ssize_t r = ::recv(fd_, c, n, 0);
            if (r < 0 && errno == EINTR) continue;
            if (r == 0 || (r < 0 && errno == ECONNRESET)) return false;
            BOOST_REQUIRE_MESSAGE(r > 0, "recv failed: " << std::strerror(errno));
            c += r;
            n -= static_cast<std::size_t>(r);
        }
        return true;
    }
    bytes recv(std::size_t n) {
        bytes b(n);
        BOOST_REQUIRE_MESSAGE(recv(b.data(), n), "connection closed by the server");
        return b;
    }

    /// True if the server closes the connection within `limit` (data sent
    /// before the close is skipped).
    bool closed_within(std::chrono::milliseconds limit) {
        const auto until = std::chrono::steady_clock::now() + limit;
        char buf[4096];
        for (;;) {
            const auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
            if (left.count() <= 0) return false;
            pollfd p{fd_, POLLIN, 0};
            const int pr = ::poll(&p, 1, static_cast<int>(left.count()));
            if (pr < 0 && errno == EINTR) continue;
            if (pr <= 0) return false;
            const ssize_t r = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno == ECONNRESET)) return true;
        }
    }
    /// True if something can be read within `limit`.
    bool readable_within(std::chrono::milliseconds limit) {
        const auto until = std::chrono::steady_clock::now() + limit;
        for (;;) {
            const auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
            pollfd p{fd_, POLLIN, 0};
            const int pr = ::poll(&p, 1, static_cast<int>(std::max<long>(left.count(), 0)));
            if (pr < 0 && errno == EINTR) continue;
            return pr > 0;
        }
    }

    /// Close with a reset, as a killed client would.
    void reset() {
        linger l{1, 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        ::close(fd_);
        fd_ = -1;
    }

    // ---- handshake --------------------------------------------------------

    /// Read the greeting and answer with `client_flags`.
    void greet(std::uint32_t client_flags = nbd::flag_c_fixed_newstyle | nbd::flag_c_no_zeroes) {
        const bytes g = recv(nbd::greeting_size);
        BOOST_REQUIRE_EQUAL(nbd::get64(g.data()), nbd::init_magic);
        BOOST_REQUIRE_EQUAL(nbd::get64(g.data() + 8), nbd::opts_magic);
        BOOST_CHECK_EQUAL(nbd::get16(g.data() + 16), nbd::flag_fixed_newstyle | nbd::flag_no_zeroes);
        std::byte f[4];
        nbd::put32(f, client_flags);
        send(f, 4);
    }

    void send_option(std::uint32_t option, const bytes& data, std::uint64_t magic = nbd::opts_magic) {
        bytes h(16);
        nbd::put64(h.data(), magic);
        nbd::put32(h.data() + 8, option);
        nbd::put32(h.data() + 12, static_cast<std::uint32_t>(data.size()));
        send(h);
        send(data);
    }

    option_reply read_option_reply() {
        const bytes h = recv(nbd::option_reply_header_size);
        BOOST_REQUIRE_EQUAL(nbd::get64(h.data()), nbd::rep_magic);
        option_reply r;
        r.option = nbd::get32(h.data() + 8);
        r.type = nbd::get32(h.data() + 12);
        r.data = recv(nbd::get32(h.data() + 16));
        return r;
    }

    /// Send an option and return its replies up to the final one.
    std::vector<option_reply> option(std::uint32_t option, const bytes& data = {}) {
        send_option(option, data);
        std::vector<option_reply> all;
        for (;;) {
            all.push_back(read_option_reply());
            BOOST_REQUIRE_EQUAL(all.back().option, option);
            const std::uint32_t t = all.back().type;
            if (t == nbd::rep_ack || (t & nbd::rep_err_bit)) return all;
        }
    }

    static bytes meta_request(const std::string& name, const std::vector<std::string>& queries) {
        bytes d;
        add32(d, static_cast<std::uint32_t>(name.size()));
        add_str(d, name);
        add32(d, static_cast<std::uint32_t>(queries.size()));
        for (const auto& q : queries) {
            add32(d, static_cast<std::uint32_t>(q.size()));
            add_str(d, q);
        }
        return d;
    }

    static bytes go_request(const std::string& name, const std::vector<std::uint16_t>& infos) {
        bytes d;
        add32(d, static_cast<std::uint32_t>(name.size()));
        add_str(d, name);
        add16(d, static_cast<std::uint16_t>(infos.size()));
        for (auto i : infos) add16(d, i);
        return d;
    }

    /// The usual modern negotiation: structured replies, contexts, GO.
    void connect(bool structured = true, std::vector<std::string> contexts = {"base:allocation"},
                 const std::string& name = "") {
        greet();
        if (structured) {
            auto r = option(nbd::opt_structured_reply);
            BOOST_REQUIRE_EQUAL(r.back().type, nbd::rep_ack);
            structured_ = true;
            if (!contexts.empty()) {
                r = option(nbd::opt_set_meta_context, meta_request(name, contexts));
                BOOST_REQUIRE_EQUAL(r.back().type, nbd::rep_ack);
                for (std::size_t i = 0; i + 1 < r.size(); ++i)
                    context_ids_[to_string(bytes(r[i].data.begin() + 4, r[i].data.end()))] =
                        nbd::get32(r[i].data.data());
            }
        }
        const auto r = option(nbd::opt_go, go_request(name, {nbd::info_block_size}));
        BOOST_REQUIRE_EQUAL(r.back().type, nbd::rep_ack);
        for (const auto& x : r) {
            if (x.type != nbd::rep_info) continue;
            const std::uint16_t what = nbd::get16(x.data.data());
            if (what == nbd::info_export) {
                size_ = nbd::get64(x.data.data() + 2);
                flags_ = nbd::get16(x.data.data() + 10);
            } else if (what == nbd::info_block_size) {
                min_block_ = nbd::get32(x.data.data() + 2);
                preferred_block_ = nbd::get32(x.data.data() + 6);
                max_block_ = nbd::get32(x.data.data() + 10);
            }
        }
    }

    // ---- transmission -----------------------------------------------------

    void request(std::uint16_t type, std::uint64_t cookie, std::uint64_t offset, std::uint32_t length,
                 std::uint16_t flags = 0, const std::string* payload = nullptr) {
        std::byte h[nbd::request_size];
        nbd::encode_request(h, {nbd::request_magic, flags, type, cookie, offset, length});
        send(h, sizeof h);
        if (payload) send(payload->data(), payload->size());
        if (type == nbd::cmd_read) reads_[cookie] = length;
    }

    /// The next reply message (one chunk, when structured).
    reply next() {
        std::byte m[4];
        BOOST_REQUIRE_MESSAGE(recv(m, 4), "connection closed by the server");
        reply r;
        const std::uint32_t magic = nbd::get32(m);
        if (magic == nbd::simple_reply_magic) {
            const bytes rest = recv(12);
            r.error = nbd::get32(rest.data());
            r.cookie = nbd::get64(rest.data() + 4);
            auto it = reads_.find(r.cookie);
            if (it != reads_.end()) {
                if (r.error == 0) r.payload = recv(it->second);
                reads_.erase(it);
            }
            return r;
        }
        BOOST_REQUIRE_EQUAL(magic, nbd::structured_reply_magic);
        const bytes rest = recv(16);
        r.structured = true;
        r.flags = nbd::get16(rest.data());
        r.type = nbd::get16(rest.data() + 2);
        r.cookie = nbd::get64(rest.data() + 4);
        r.payload = recv(nbd::get32(rest.data() + 12));
        if (r.type & 0x8000) r.error = nbd::get32(r.payload.data());
        if (r.flags & nbd::reply_flag_done) reads_.erase(r.cookie);
        return r;
    }

    /// The whole answer to one request: (error, read data). Structured
    /// chunks are reassembled; the request must be the only one pending.
    std::pair<std::uint32_t, std::string> answer(std::uint64_t cookie) {
        std::uint32_t error = 0;
        std::string data;
        for (;;) {
            reply r = next();
            BOOST_REQUIRE_EQUAL(r.cookie, cookie);
            if (!r.structured) return {r.error, to_string(r.payload)};
            if (r.type == nbd::reply_type_offset_data) data += to_string(bytes(r.payload.begin() + 8, r.payload.end()));
            if (r.type & 0x8000) error = r.error;
            if (r.flags & nbd::reply_flag_done) return {error, data};
        }
    }

    std::uint32_t write(std::uint64_t offset, const std::string& data, std::uint16_t flags = 0) {
        const std::uint64_t c = ++cookie_;
        request(nbd::cmd_write, c, offset, static_cast<std::uint32_t>(data.size()), flags, &data);
        return answer(c).first;
    }
    std::pair<std::uint32_t, std::string> read(std::uint64_t offset, std::uint32_t length, std::uint16_t flags = 0) {
        const std::uint64_t c = ++cookie_;
        request(nbd::cmd_read, c, offset, length, flags);
        return answer(c);
    }
    std::uint32_t simple(std::uint16_t type, std::uint64_t offset, std::uint32_t length, std::uint16_t flags = 0) {
        const std::uint64_t c = ++cookie_;
        request(type, c, offset, length, flags);
        return answer(c).first;
    }
    void disconnect() { request(nbd::cmd_disc, ++cookie_, 0, 0); }

    std::uint64_t size_ = 0;
    std::uint16_t flags_ = 0;
    std::uint32_t min_block_ = 0, preferred_block_ = 0, max_block_ = 0;
    bool structured_ = false;
    std::map<std::string, std::uint32_t> context_ids_;
    std::uint64_t cookie_ = 0;

private:
    int fd_ = -1;
    std::map<std::uint64_t, std::uint32_t> reads_;
};

constexpr std::uint64_t image_size = 64 << 20;

struct fixture {
    fixture() : dir("proto"), srv(dir), image(dir / "disk.qed") { create_qed(image, image_size); }
    temp_dir dir;
    server srv;
    std::string image;
};

}  // namespace

BOOST_AUTO_TEST_SUITE(nbd_protocol)

BOOST_FIXTURE_TEST_CASE(handshake_go_and_export_info, fixture) {
    srv.start({"-t", "-x", "disk", "-D", "a test disk"}, image);
    client c(srv);
    c.greet();
    // LIST: the one export, with its description.
    auto r = c.option(nbd::opt_list);
    BOOST_REQUIRE_EQUAL(r.size(), 2u);
    BOOST_CHECK_EQUAL(r[0].type, nbd::rep_server);
    BOOST_CHECK_EQUAL(nbd::get32(r[0].data.data()), 4u);
    BOOST_CHECK_EQUAL(to_string(r[0].data).substr(4), "diska test disk");
    // STRUCTURED_REPLY, then LIST_META_CONTEXT with no query lists all contexts.
    BOOST_CHECK_EQUAL(c.option(nbd::opt_structured_reply).back().type, nbd::rep_ack);
    r = c.option(nbd::opt_list_meta_context, client::meta_request("disk", {}));
    BOOST_REQUIRE_EQUAL(r.size(), 3u);
    BOOST_CHECK_EQUAL(to_string(r[0].data).substr(4), "base:allocation");
    BOOST_CHECK_EQUAL(to_string(r[1].data).substr(4), "qemu:allocation-depth");
    // SET selects by exact name; unknown names are ignored.
    r = c.option(nbd::opt_set_meta_context, client::meta_request("disk", {"base:allocation", "x-foo:bar"}));
    BOOST_REQUIRE_EQUAL(r.size(), 2u);
    BOOST_CHECK_EQUAL(r[0].type, nbd::rep_meta_context);
    BOOST_CHECK_EQUAL(to_string(r[0].data).substr(4), "base:allocation");
    // INFO does not end the negotiation; GO does.
    r = c.option(nbd::opt_info, client::go_request("disk", {nbd::info_name, nbd::info_description}));
    BOOST_REQUIRE_GE(r.size(), 4u);
    r = c.option(nbd::opt_go, client::go_request("disk", {nbd::info_block_size}));
    bool saw_export = false, saw_block = false;
    for (const auto& x : r) {
        if (x.type != nbd::rep_info) continue;
        const auto what = nbd::get16(x.data.data());
        if (what == nbd::info_export) {
            saw_export = true;
            BOOST_CHECK_EQUAL(nbd::get64(x.data.data() + 2), image_size);
            const auto f = nbd::get16(x.data.data() + 10);
            BOOST_CHECK(f & nbd::flag_has_flags);
            BOOST_CHECK(f & nbd::flag_send_flush);
            BOOST_CHECK(f & nbd::flag_send_fua);
            BOOST_CHECK(f & nbd::flag_send_write_zeroes);
            BOOST_CHECK(f & nbd::flag_send_df);
            BOOST_CHECK(!(f & nbd::flag_send_trim));  // only with --discard=unmap
            BOOST_CHECK(!(f & nbd::flag_read_only));
            BOOST_CHECK(!(f & nbd::flag_can_multi_conn));  // -e 1: one client at a time
        } else if (what == nbd::info_block_size) {
            saw_block = true;
            BOOST_CHECK_EQUAL(nbd::get32(x.data.data() + 2), 512u);
            BOOST_CHECK_EQUAL(nbd::get32(x.data.data() + 10), 32u << 20);
        }
    }
    BOOST_CHECK(saw_export && saw_block);
    BOOST_CHECK_EQUAL(r.back().type, nbd::rep_ack);
    // Transmission works.
    c.structured_ = true;
    BOOST_CHECK_EQUAL(c.write(0, std::string(4096, 'x')), 0u);
    BOOST_CHECK_EQUAL(c.read(0, 4096).second, std::string(4096, 'x'));
    c.disconnect();
    BOOST_CHECK(c.closed_within(5s));
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(image, 0, std::string(4096, 'x'));
}

BOOST_FIXTURE_TEST_CASE(several_exports_are_listed_and_chosen_by_name, fixture) {
    const std::string other = dir / "other.qed";
    create_qed(other, 2 * image_size);
    srv.start({"-t", "-e", "0", "--export", "name=disk,file=" + image + ",description=first", "--export",
               "name=other,file=" + other + ",readonly=on"},
              "");
    client c(srv);
    c.greet();
    // LIST: one NBD_REP_SERVER per export, in order, then the ACK.
    auto r = c.option(nbd::opt_list);
    BOOST_REQUIRE_EQUAL(r.size(), 3u);
    BOOST_CHECK_EQUAL(r[0].type, nbd::rep_server);
    BOOST_CHECK_EQUAL(to_string(r[0].data).substr(4), "diskfirst");
    BOOST_CHECK_EQUAL(r[1].type, nbd::rep_server);
    BOOST_CHECK_EQUAL(nbd::get32(r[1].data.data()), 5u);
    BOOST_CHECK_EQUAL(to_string(r[1].data).substr(4), "other");
    BOOST_CHECK_EQUAL(r[2].type, nbd::rep_ack);
    // INFO answers for the export named; the empty name is none of them.
    BOOST_CHECK_EQUAL(c.option(nbd::opt_info, client::go_request("", {})).back().type, nbd::rep_err_unknown);
    r = c.option(nbd::opt_info, client::go_request("other", {}));
    BOOST_REQUIRE_EQUAL(r.back().type, nbd::rep_ack);
    BOOST_CHECK_EQUAL(nbd::get64(r[0].data.data() + 2), 2 * image_size);
    BOOST_CHECK(nbd::get16(r[0].data.data() + 10) & nbd::flag_read_only);
    // EXPORT_NAME picks one too.
    c.send_option(nbd::opt_export_name, to_bytes("other"));
    const bytes reply = c.recv(10);
    BOOST_CHECK_EQUAL(nbd::get64(reply.data()), 2 * image_size);
    BOOST_CHECK(nbd::get16(reply.data() + 8) & nbd::flag_read_only);
    BOOST_CHECK_EQUAL(c.write(0, std::string(4096, 'o')), nbd::err_perm);
    // GO for the writable one; its writes land in its image.
    client d(srv);
    d.connect(true, {"base:allocation"}, "disk");
    BOOST_CHECK_EQUAL(d.write(0, std::string(4096, 'd')), 0u);
    BOOST_CHECK_EQUAL(d.read(0, 4096).second, std::string(4096, 'd'));
    d.disconnect();
    // EXPORT_NAME for an unknown name: the connection is closed, one line logged.
    client e(srv);
    e.greet();
    e.send_option(nbd::opt_export_name, to_bytes("third"));
    BOOST_CHECK(e.closed_within(5s));
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    BOOST_CHECK_MESSAGE(srv.stderr_text().find("(127.0.0.1:") != std::string::npos &&
                            srv.stderr_text().find("asked for unknown export 'third'") != std::string::npos,
                        srv.stderr_text());
    verify_image(image, 0, std::string(4096, 'd'));
    verify_image(other, 0, std::string(4096, '\0'));
}

BOOST_FIXTURE_TEST_CASE(option_errors_keep_the_negotiation_going, fixture) {
    srv.start({"-t", "-e", "2"}, image);
    client c(srv);
    c.greet();
    // Unknown option with data: ERR_UNSUP, data skipped.
    auto r = c.option(99, to_bytes("some data"));
    BOOST_CHECK_EQUAL(r.back().type, nbd::rep_err_unsup);
    BOOST_CHECK_EQUAL(c.option(nbd::opt_list, to_bytes("x")).back().type, nbd::rep_err_invalid);
    BOOST_CHECK_EQUAL(c.option(nbd::opt_starttls).back().type, nbd::rep_err_policy);
    BOOST_CHECK_EQUAL(c.option(nbd::opt_extended_headers).back().type, nbd::rep_err_unsup);
    // Contexts need structured replies first.
    BOOST_CHECK_EQUAL(c.option(nbd::opt_set_meta_context, client::meta_request("", {"base:allocation"})).back().type,
                      nbd::rep_err_invalid);
    BOOST_CHECK_EQUAL(c.option(nbd::opt_structured_reply).back().type, nbd::rep_ack);
    BOOST_CHECK_EQUAL(c.option(nbd::opt_structured_reply).back().type, nbd::rep_err_invalid);
    BOOST_CHECK_EQUAL(
        c.option(nbd::opt_set_meta_context, client::meta_request("nope", {"base:allocation"})).back().type,
        nbd::rep_err_unknown);
    // Malformed INFO/GO/SET: counts that don't match the length.
    bytes bad = client::go_request("", {nbd::info_name});
    bad.pop_back();
    BOOST_CHECK_EQUAL(c.option(nbd::opt_go, bad).back().type, nbd::rep_err_invalid);
    bad = client::go_request("", {});
    nbd::put32(bad.data(), 1000);  // name longer than the data
    BOOST_CHECK_EQUAL(c.option(nbd::opt_info, bad).back().type, nbd::rep_err_invalid);
    bad = client::meta_request("", {"base:allocation"});
    bad.push_back(std::byte{0});
    BOOST_CHECK_EQUAL(c.option(nbd::opt_set_meta_context, bad).back().type, nbd::rep_err_invalid);
    BOOST_CHECK_EQUAL(c.option(nbd::opt_go, client::go_request("other", {})).back().type, nbd::rep_err_unknown);
    // Oversized option data is read and refused.
    BOOST_CHECK_EQUAL(c.option(nbd::opt_info, bytes(300 * 1024)).back().type, nbd::rep_err_too_big);
    // After all that, GO still works.
    BOOST_CHECK_EQUAL(c.option(nbd::opt_go, client::go_request("", {})).back().type, nbd::rep_ack);
    c.structured_ = true;
    BOOST_CHECK_EQUAL(c.simple(nbd::cmd_flush, 0, 0), 0u);
    // ABORT: an ACK, then the server closes.
    client a(srv);
    a.greet();
    BOOST_CHECK_EQUAL(a.option(nbd::opt_abort).back().type, nbd::rep_ack);
    BOOST_CHECK(a.closed_within(5s));
    BOOST_CHECK_EQUAL(srv.stop(), 0);
}

BOOST_FIXTURE_TEST_CASE(malformed_handshakes_close_only_that_connection, fixture) {
    srv.start({"-t", "-e", "0", "--handshake-limit", "1"}, image);
    client good(srv);
    good.connect();
    {  // unknown client flags
        client c(srv);
        c.greet(0x80);
        BOOST_CHECK(c.closed_within(5s));
    }
    {  // wrong option magic
        client c(srv);
        c.greet();
        c.send_option(nbd::opt_go, client::go_request("", {}), 0x1234);
        BOOST_CHECK(c.closed_within(5s));
    }
    {  // EXPORT_NAME for an unknown export: no way to answer but hanging up
        client c(srv);
        c.greet();
        c.send_option(nbd::opt_export_name, to_bytes("nope"));
        BOOST_CHECK(c.closed_within(5s));
    }
    {  // a plain newstyle client may only send EXPORT_NAME
        client c(srv);
        c.greet(0);
        c.send_option(nbd::opt_list, {});
        BOOST_CHECK(c.closed_within(5s));
    }
    {  // truncated: half the client flags, then gone
        client c(srv);
        c.recv(nbd::greeting_size);
        c.send("\0\0", 2);
    }
    {  // truncated option header, then gone
        client c(srv);
        c.greet();
        c.send("IHAVE", 5);
    }
    {  // a client that says nothing is dropped after the handshake limit
        client c(srv);
        BOOST_CHECK(c.closed_within(5s));
    }
    {  // plain newstyle, EXPORT_NAME: size, flags and 124 zero bytes
        client c(srv);
        c.greet(0);
        c.send_option(nbd::opt_export_name, {});
        const bytes r = c.recv(8 + 2 + 124);
        BOOST_CHECK_EQUAL(nbd::get64(r.data()), image_size);
        BOOST_CHECK(std::all_of(r.begin() + 10, r.end(), [](std::byte b) { return b == std::byte{0}; }));
        BOOST_CHECK_EQUAL(c.write(512, std::string(512, 'p')), 0u);
        BOOST_CHECK_EQUAL(c.read(512, 512).second, std::string(512, 'p'));
    }
    // The first client never noticed.
    BOOST_CHECK_EQUAL(good.write(0, std::string(512, 'g')), 0u);
    BOOST_CHECK_EQUAL(good.read(0, 512).second, std::string(512, 'g'));
    good.disconnect();
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(image, 0, std::string(512, 'g') + std::string(512, 'p'));
}

BOOST_FIXTURE_TEST_CASE(bad_requests_get_error_replies, fixture) {
    srv.start({"-t"}, image);
    for (bool structured : {true, false}) {
        BOOST_TEST_CONTEXT("structured replies " << structured) {
            client c(srv);
            c.connect(structured);
            BOOST_CHECK_EQUAL(c.simple(42, 0, 512), nbd::err_inval);               // unknown command
            BOOST_CHECK_EQUAL(c.simple(nbd::cmd_trim, 0, 4096), nbd::err_inval);   // not advertised
            BOOST_CHECK_EQUAL(c.simple(nbd::cmd_cache, 0, 4096), nbd::err_inval);  // not advertised
            BOOST_CHECK_EQUAL(c.read(100, 512).first, nbd::err_inval);             // misaligned
            BOOST_CHECK_EQUAL(c.read(0, 100).first, nbd::err_inval);
            BOOST_CHECK_EQUAL(c.read(image_size, 512).first, nbd::err_inval);  // past the end
            BOOST_CHECK_EQUAL(c.read(image_size - 512, 1024).first, nbd::err_inval);
            BOOST_CHECK_EQUAL(c.read(~std::uint64_t{0} - 511, 512).first, nbd::err_inval);
            BOOST_CHECK_EQUAL(c.read(0, (32u << 20) + 512).first, nbd::err_overflow);  // too large
            BOOST_CHECK_EQUAL(c.read(0, 512, 0x100).first, nbd::err_inval);            // unknown flag
            BOOST_CHECK_EQUAL(c.simple(nbd::cmd_write_zeroes, 0, 512, nbd::cmd_flag_fast_zero), nbd::err_inval);
            // Writes past the end: ENOSPC, and the payload is consumed.
            BOOST_CHECK_EQUAL(c.write(image_size, std::string(512, 'z')), nbd::err_nospc);
            BOOST_CHECK_EQUAL(c.simple(nbd::cmd_write_zeroes, image_size - 512, 1024), nbd::err_nospc);
            BOOST_CHECK_EQUAL(c.write(3, std::string(512, 'z')), nbd::err_inval);
            // An oversized write: its 33 MiB are skipped, the stream stays in step.
            BOOST_CHECK_EQUAL(c.write(0, std::string((32u << 20) + 1024 * 1024, 'o')), nbd::err_overflow);
            BOOST_CHECK_EQUAL(c.simple(nbd::cmd_block_status, 0, 4096),
                              structured ? 0u : nbd::err_inval);  // no context without structured replies
            // Zero-length requests are harmless.
            BOOST_CHECK_EQUAL(c.read(0, 0).first, 0u);
            BOOST_CHECK_EQUAL(c.write(0, std::string()), 0u);
            // Good requests still work, with FUA and FLUSH.
            const std::string data = random_bytes(64 * 1024, structured ? 1 : 2);
            BOOST_CHECK_EQUAL(c.write(1 << 20, data, nbd::cmd_flag_fua), 0u);
            BOOST_CHECK_EQUAL(c.simple(nbd::cmd_flush, 0, 0), 0u);
            BOOST_CHECK_EQUAL(c.read(1 << 20, 64 * 1024, structured ? nbd::cmd_flag_df : 0).second, data);
            BOOST_CHECK_EQUAL(c.read(0, 512, nbd::cmd_flag_fua).first, 0u);  // FUA is accepted on any command
            c.disconnect();
            BOOST_CHECK(c.closed_within(5s));
        }
    }
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(image, 1 << 20, random_bytes(64 * 1024, 2));
}

BOOST_FIXTURE_TEST_CASE(bad_request_magic_drops_that_client_only, fixture) {
    srv.start({"-t", "-e", "2"}, image);
    client good(srv);
    good.connect();
    BOOST_CHECK(good.flags_ & nbd::flag_can_multi_conn);  // -e 2: safe and useful
    client bad(srv);
    bad.connect();
    const std::string junk(28, 'J');
    bad.send(junk.data(), junk.size());
    BOOST_CHECK(bad.closed_within(5s));
    BOOST_CHECK_EQUAL(good.write(4096, std::string(4096, 'k')), 0u);
    BOOST_CHECK_EQUAL(good.read(4096, 4096).second, std::string(4096, 'k'));
    good.disconnect();
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(image, 4096, std::string(4096, 'k'));
}

BOOST_FIXTURE_TEST_CASE(many_requests_in_flight, fixture) {
    srv.start({"-t"}, image);
    client c(srv);
    c.connect();
    // 150 writes, then 150 reads, each batch sent before any reply is
    // read: more than the server takes at once, so it must apply
    // back-pressure, not fail. (A read is only sent once the write it
    // reads has been answered: NBD does not order requests in flight.)
    constexpr int n = 150;
    std::map<std::uint64_t, std::string> expect;
    for (int i = 0; i < n; ++i) {
        const std::string d = random_bytes(8192, 100 + i);
        c.request(nbd::cmd_write, 1000 + i, std::uint64_t(i) * 65536 + 512, 8192, 0, &d);
        expect[2000 + i] = d;
    }
    bool out_of_order = false;
    std::uint64_t last = 0;
    for (int i = 0; i < n; ++i) {
        reply r = c.next();
        BOOST_REQUIRE_EQUAL(r.error, 0u);
        BOOST_REQUIRE(r.cookie >= 1000 && r.cookie < 1000 + n);
        if (r.cookie < last) out_of_order = true;
        last = r.cookie;
    }
    for (int i = 0; i < n; ++i) c.request(nbd::cmd_read, 2000 + i, std::uint64_t(i) * 65536 + 512, 8192);
    std::map<std::uint64_t, std::string> got;
    while (got.size() < expect.size()) {
        reply r = c.next();
        BOOST_REQUIRE_EQUAL(r.error, 0u);
        BOOST_REQUIRE(r.flags & nbd::reply_flag_done);
        if (r.cookie < last) out_of_order = true;
        last = r.cookie;
        got[r.cookie] = to_string(bytes(r.payload.begin() + 8, r.payload.end()));
    }
    BOOST_CHECK(got == expect);
    BOOST_TEST_MESSAGE("replies out of order: " << out_of_order);
    c.disconnect();
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(image, 512, expect[2000]);
}

BOOST_FIXTURE_TEST_CASE(client_vanishing_with_requests_in_flight, fixture) {
    srv.start({"-t", "-e", "4"}, image);
    client other(srv);
    other.connect();
    for (int round = 0; round < 3; ++round) {
        client c(srv);
        c.connect();
        // 24 MiB of writes and some reads in flight, then a reset.
        const std::string d = random_bytes(1 << 20, 7);
        for (int i = 0; i < 24; ++i) c.request(nbd::cmd_write, i, std::uint64_t(i) << 20, 1 << 20, 0, &d);
        for (int i = 0; i < 8; ++i) c.request(nbd::cmd_read, 100 + i, std::uint64_t(i) << 20, 1 << 20);
        if (round == 1) c.next();  // let some work start
        c.reset();
        // Another client is unaffected meanwhile.
        BOOST_CHECK_EQUAL(other.write(40 << 20, std::string(4096, char('a' + round))), 0u);
        BOOST_CHECK_EQUAL(other.read(40 << 20, 4096).second, std::string(4096, char('a' + round)));
    }
    {  // a client that closes in the middle of a write payload
        client c(srv);
        c.connect();
        const std::string half(1 << 19, 'h');
        c.request(nbd::cmd_write, 1, 0, 1 << 20, 0, &half);
    }
    other.disconnect();
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(image, 40 << 20, std::string(4096, 'c'));
}

BOOST_FIXTURE_TEST_CASE(block_status_reports_data_zeros_and_holes, fixture) {
    srv.start({"-t"}, image);
    client c(srv);
    c.connect(true, {"base:allocation", "qemu:allocation-depth"});
    BOOST_REQUIRE_EQUAL(c.context_ids_.size(), 2u);
    const std::uint32_t base = c.context_ids_["base:allocation"];
    const std::uint32_t depth = c.context_ids_["qemu:allocation-depth"];
    BOOST_CHECK_EQUAL(c.write(0, std::string(65536, 'd')), 0u);
    BOOST_CHECK_EQUAL(c.simple(nbd::cmd_write_zeroes, 1 << 20, 1 << 20), 0u);  // may unmap: zero clusters
    BOOST_CHECK_EQUAL(c.simple(nbd::cmd_write_zeroes, 4 << 20, 65536, nbd::cmd_flag_no_hole), 0u);  // real zeros

    auto status = [&](std::uint64_t off, std::uint32_t len, std::uint16_t flags) {
        const std::uint64_t k = ++c.cookie_;
        c.request(nbd::cmd_block_status, k, off, len, flags);
        std::map<std::uint32_t, std::vector<std::pair<std::uint32_t, std::uint32_t>>> out;
        for (;;) {
            reply r = c.next();
            BOOST_REQUIRE_EQUAL(r.cookie, k);
            BOOST_REQUIRE_EQUAL(r.type, nbd::reply_type_block_status);
            auto& v = out[nbd::get32(r.payload.data())];
            for (std::size_t i = 4; i + 8 <= r.payload.size(); i += 8)
                v.emplace_back(nbd::get32(r.payload.data() + i), nbd::get32(r.payload.data() + i + 4));
            if (r.flags & nbd::reply_flag_done) return out;
        }
    };
    using desc = std::vector<std::pair<std::uint32_t, std::uint32_t>>;
    constexpr std::uint32_t hz = nbd::state_hole | nbd::state_zero;
    auto s = status(0, 8 << 20, 0);
    // The NO_HOLE cluster at 4M is allocated past everything the file held
    // before (no zero fill needed there): the image file holds all but its
    // last 4 KiB as a hole. Block status asks the file, as for a raw file's
    // holes: hole + zero.
    const auto text = [](const desc& d) {
        std::string t;
        for (auto& [len, f] : d) t += " " + std::to_string(len) + ":" + std::to_string(f);
        return t;
    };
    BOOST_CHECK_MESSAGE(s[base] == (desc{{65536, 0}, {(4 << 20) - 4096, hz}, {4096, 0}, {(4 << 20) - 65536, hz}}),
                        "base:allocation" << text(s[base]));
    BOOST_CHECK(
        s[depth] ==
        (desc{{65536, 1}, {(1 << 20) - 65536, 0}, {1 << 20, 1}, {2 << 20, 0}, {65536, 1}, {(4 << 20) - 65536, 0}}));
    // REQ_ONE: one descriptor per context.
    s = status(0, 8 << 20, nbd::cmd_flag_req_one);
    BOOST_CHECK(s[base] == (desc{{65536, 0}}));
    BOOST_CHECK(s[depth] == (desc{{65536, 1}}));
    // Unaligned query: descriptors stay inside what was asked.
    s = status(100, 1000, 0);
    BOOST_CHECK(s[base] == (desc{{1000, 0}}));
    const std::uint32_t odd = static_cast<std::uint32_t>(image_size - 65000 - 100);
    s = status(65000, odd, 0);
    std::uint64_t sum = 0;
    for (auto& [len, f] : s[base]) sum += len;
    BOOST_CHECK_EQUAL(sum, odd);
    BOOST_CHECK_EQUAL(s[base].size(), 4u);
    BOOST_CHECK_EQUAL(c.simple(nbd::cmd_block_status, image_size, 512), nbd::err_inval);
    BOOST_CHECK_EQUAL(c.simple(nbd::cmd_block_status, 0, 0), nbd::err_inval);
    c.disconnect();
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(image, 1 << 20, std::string(1 << 20, '\0'));
}

BOOST_FIXTURE_TEST_CASE(read_only_export, fixture) {
    srv.start({"-t", "-r"}, image);
    client c(srv);
    c.connect();
    BOOST_CHECK(c.flags_ & nbd::flag_read_only);
    BOOST_CHECK(!(c.flags_ & nbd::flag_send_write_zeroes));
    BOOST_CHECK_EQUAL(c.write(0, std::string(512, 'w')), nbd::err_perm);
    BOOST_CHECK_EQUAL(c.simple(nbd::cmd_write_zeroes, 0, 512), nbd::err_perm);
    BOOST_CHECK_EQUAL(c.read(0, 512).second, std::string(512, '\0'));
    BOOST_CHECK_EQUAL(c.simple(nbd::cmd_flush, 0, 0), 0u);
    c.disconnect();
    BOOST_CHECK_EQUAL(srv.stop(), 0);
}

BOOST_FIXTURE_TEST_CASE(one_client_at_a_time_by_default, fixture) {
    srv.start({"-t"}, image, true);  // also: a Unix socket
    client first(srv);
    first.connect();
    client second(srv);  // the kernel accepts it; the server does not yet
    BOOST_CHECK(!second.readable_within(300ms));
    first.disconnect();
    BOOST_CHECK(first.closed_within(5s));
    BOOST_CHECK(second.readable_within(5s));
    second.connect();
    BOOST_CHECK_EQUAL(second.read(0, 512).first, 0u);
    second.disconnect();
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    BOOST_CHECK(!fs::exists(srv.socket_path()));  // removed on exit
}

BOOST_FIXTURE_TEST_CASE(exits_after_the_last_client_without_persistent, fixture) {
    srv.start({}, image);
    {
        client c(srv);
        c.connect();
        BOOST_CHECK_EQUAL(c.write(0, std::string(512, 'q')), 0u);
        c.disconnect();
        BOOST_CHECK(c.closed_within(5s));
    }
    BOOST_CHECK_EQUAL(srv.wait(10s), 0);
    verify_image(image, 0, std::string(512, 'q'));
}

BOOST_FIXTURE_TEST_CASE(sigterm_answers_requests_in_flight_then_exits_clean, fixture) {
    srv.start({"-t", "-e", "2"}, image);
    client idle(srv);
    idle.connect();
    client busy(srv);
    busy.connect();
    const std::string d = random_bytes(1 << 20, 9);
    busy.request(nbd::cmd_write, 1, 0, 1 << 20, 0, &d);
    BOOST_CHECK_EQUAL(busy.next().error, 0u);  // the server is reading this client
    for (int i = 1; i < 16; ++i) busy.request(nbd::cmd_write, 1 + i, std::uint64_t(i) << 20, 1 << 20, 0, &d);
    const auto t0 = std::chrono::steady_clock::now();
    srv.process().signal(SIGTERM);
    // Every reply that comes is a success; then the server closes.
    int answered = 1;
    for (;;) {
        std::byte m[16];
        if (!busy.recv(m, 16)) break;
        BOOST_CHECK_EQUAL(nbd::get32(m), nbd::simple_reply_magic);
        BOOST_CHECK_EQUAL(nbd::get32(m + 4), 0u);
        ++answered;
    }
    BOOST_TEST_MESSAGE(answered << " of 16 writes answered before shutdown");
    BOOST_CHECK(idle.closed_within(5s));
    BOOST_CHECK_EQUAL(srv.wait(20s), 0);
    BOOST_CHECK(std::chrono::steady_clock::now() - t0 < 8s);  // no drain timeout needed
    verify_image(image, 0, d);
}

BOOST_FIXTURE_TEST_CASE(shutdown_does_not_wait_for_ever_on_a_client_that_stops_reading, fixture) {
    for (int signals : {2, 1}) {
        BOOST_TEST_CONTEXT("signals " << signals) {
            srv.start({"-t"}, image);
            client c(srv);
            c.connect();
            // 64 MiB of reads whose replies are never read: the server's
            // writes block once the socket buffers are full.
            for (int i = 0; i < 64; ++i) c.request(nbd::cmd_read, i, std::uint64_t(i) << 20, 1 << 20);
            std::this_thread::sleep_for(300ms);
            const auto t0 = std::chrono::steady_clock::now();
            srv.process().signal(SIGTERM);
            if (signals == 2) {
                std::this_thread::sleep_for(100ms);
                srv.process().signal(SIGTERM);  // a second signal: stop waiting at once
            }
            BOOST_CHECK_EQUAL(srv.wait(30s), 0);
            const auto took = std::chrono::steady_clock::now() - t0;
            // One signal: the 10 s drain limit ends the wait.
            BOOST_CHECK(took < (signals == 2 ? 5s : 15s));
            verify_image(image);
        }
    }
}

/// A field of /proc/PID/status in KiB ("VmRSS", "VmHWM").
std::uint64_t proc_status_kib(pid_t pid, const std::string& field) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1));
    BOOST_FAIL("no " << field << " in /proc/" << pid << "/status");
    return 0;
}

/// ASan's quarantine of freed blocks and TSan's shadow memory: the memory
/// bounds are for what the server keeps, which the plain build measures.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr long sanitizer_slack_kib = 320 * 1024;
#else
constexpr long sanitizer_slack_kib = 0;
#endif

/// `n` clients that each send 64 reads of 1 MiB (cookies 0-63, at offsets
/// cycling over the first `span_mib` MiB) and never read a reply.
std::vector<std::unique_ptr<client>> stuck_clients(server& srv, int n, std::uint32_t span_mib) {
    constexpr std::uint32_t mib = 1 << 20;
    std::vector<std::unique_ptr<client>> stuck;
    for (int c = 0; c < n; ++c) {
        stuck.push_back(std::make_unique<client>(srv));
        stuck.back()->connect(false);
        for (std::uint32_t i = 0; i < 64; ++i)
            stuck.back()->request(nbd::cmd_read, i, std::uint64_t(i % span_mib) * mib, mib);
    }
    return stuck;
}

BOOST_FIXTURE_TEST_CASE(clients_that_never_read_replies_share_one_memory_cap, fixture) {
    const std::string data = random_bytes(image_size, 21);
    write_image(image, 0, data);
    srv.start({"-t", "-e", "0", "--memory-limit", "32M"}, image);
    const pid_t pid = srv.process().pid();
    const std::uint64_t base_kib = proc_status_kib(pid, "VmRSS");
    constexpr std::uint32_t mib = 1 << 20;
    // Two clients send 64 MiB of reads each and read nothing: alone, each
    // could hold its own 64 MiB; together they get 32 MiB and the rest waits.
    auto stuck = stuck_clients(srv, 2, 64);
    std::this_thread::sleep_for(1s);
    // A third client is served at once: clients that hold bytes take them
    // from the cap less a reserve, which a client with nothing in flight
    // may use, so the stuck ones can't lock it out.
    client late(srv);
    late.connect(false);
    late.request(nbd::cmd_read, 99, 5 * mib, mib);
    BOOST_CHECK(late.readable_within(5s));
    const std::uint64_t peak_kib = proc_status_kib(pid, "VmHWM");
    BOOST_TEST_MESSAGE("server RSS " << base_kib / 1024 << " MiB at start, peak " << peak_kib / 1024
                                     << " MiB with two stuck clients");
    // 32 MiB of buffers and some slack; without the shared cap it is over 128 MiB.
    BOOST_CHECK_LT(peak_kib, base_kib + 56 * 1024 + sanitizer_slack_kib);
    auto read_all = [&](client& c) {
        std::map<std::uint64_t, bool> seen;
        for (int i = 0; i < 64; ++i) {
            const reply r = c.next();
            BOOST_REQUIRE_EQUAL(r.error, 0u);
            BOOST_REQUIRE(r.cookie < 64 && !seen[r.cookie]);
            seen[r.cookie] = true;
            BOOST_REQUIRE(to_string(r.payload) == data.substr(r.cookie * mib, mib));
        }
    };
    // One of them reads: the bytes it frees go to it, not to the other one,
    // which is over its share and stays stuck.
    read_all(*stuck[0]);
    const reply r = late.next();
    BOOST_CHECK_EQUAL(r.cookie, 99u);
    BOOST_CHECK_EQUAL(r.error, 0u);
    BOOST_CHECK(to_string(r.payload) == data.substr(5 * mib, mib));
    // And when the last one reads, it gets every reply, right.
    read_all(*stuck[1]);
    BOOST_CHECK_LT(proc_status_kib(pid, "VmHWM"), base_kib + 56 * 1024 + sanitizer_slack_kib);
    stuck.clear();
    late.disconnect();
    BOOST_CHECK_EQUAL(srv.stop(), 0);
    verify_image(image, 0, data.substr(0, 4 * mib));
}

// Issue 15's fifth case: clients that send reads and never read a reply,
// as many as fill the cap, do not lock a well-behaved client out: its read
// is answered at once, right, while the server holds no more than the cap.
BOOST_FIXTURE_TEST_CASE(stuck_clients_do_not_lock_out_a_reader, fixture) {
    const std::string data = random_bytes(image_size, 22);
    write_image(image, 0, data);
    srv.start({"-t", "-e", "0", "--memory-limit", "64M"}, image);
    const pid_t pid = srv.process().pid();
    const std::uint64_t base_kib = proc_status_kib(pid, "VmRSS");
    constexpr std::uint32_t mib = 1 << 20;
    auto stuck = stuck_clients(srv, 4, 4);  // 4 x 64 MiB of reads against a 64 MiB cap
    std::this_thread::sleep_for(1s);
    for (int round = 0; round < 3; ++round) {  // again and again, not just once
        client reader(srv);
        reader.connect(false);
        reader.request(nbd::cmd_read, 7, 2 * mib, mib);
        BOOST_REQUIRE(reader.readable_within(5s));
        const reply r = reader.next();
        BOOST_CHECK_EQUAL(r.cookie, 7u);
        BOOST_CHECK_EQUAL(r.error, 0u);
        BOOST_CHECK(to_string(r.payload) == data.substr(2 * mib, mib));
        reader.disconnect();
    }
    BOOST_CHECK_LT(proc_status_kib(pid, "VmHWM"), base_kib + (64 + 24) * 1024 + sanitizer_slack_kib);
    stuck.clear();
    BOOST_CHECK_EQUAL(srv.stop(), 0);
}

BOOST_AUTO_TEST_CASE(fork_returns_once_listening) {
    temp_dir dir("fork");
    const std::string image = dir / "disk.qed";
    create_qed(image, 1 << 20);
    const std::string pid_file = dir / "qed-nbd.pid";
    const std::uint16_t port = free_port();
    const auto r = run({server_binary(), "--fork", "--pid-file", pid_file, "-p", std::to_string(port), "-t", image},
                       dir.path(), 20s);
    BOOST_REQUIRE_MESSAGE(r.status == 0, r.err);
    const pid_t pid = std::stoi(read_file(pid_file));
    // Whatever happens below, the daemon goes away at the end.
    struct reaper {
        pid_t pid;
        ~reaper() { ::kill(pid, SIGKILL); }
    } guard{pid};
    auto gone = [pid] {
        const std::string st = read_file("/proc/" + std::to_string(pid) + "/stat");
        return st.empty() || st.find(") Z") != std::string::npos;  // reaped, or a zombie of a lazy init
    };
    BOOST_REQUIRE(!gone());
    {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(port);
        BOOST_CHECK(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        char greeting[18];
        BOOST_CHECK_EQUAL(::recv(fd, greeting, sizeof greeting, MSG_WAITALL), 18);
        ::close(fd);
    }
    ::kill(pid, SIGTERM);
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (!gone() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(10ms);
    BOOST_CHECK(gone());
    BOOST_CHECK(!fs::exists(pid_file));  // removed on a clean exit
    verify_image(image);
}

BOOST_AUTO_TEST_CASE(command_line_errors) {
    temp_dir dir("cli");
    const std::string image = dir / "disk.qed";
    create_qed(image, 1 << 20);
    server srv(dir);
    auto [st, err] = srv.start_failing({"--cache", "bogus"}, image);
    BOOST_CHECK_EQUAL(st, 1);
    BOOST_CHECK(err.find("cache") != std::string::npos);
    std::tie(st, err) = srv.start_failing({"-f", "vmdk"}, image);
    BOOST_CHECK_EQUAL(st, 1);
    std::tie(st, err) = srv.start_failing({}, dir / "missing.qed");
    BOOST_CHECK_EQUAL(st, 1);
    BOOST_CHECK(err.find("missing.qed") != std::string::npos);
    std::tie(st, err) = srv.start_failing({"-k", dir / "s.sock"}, image);  // -k with -p
    BOOST_CHECK_EQUAL(st, 1);
    const auto help = run({server_binary(), "--help"}, dir.path());
    BOOST_CHECK_EQUAL(help.status, 0);
    BOOST_CHECK(help.out.find("--persistent") != std::string::npos);
    const auto version = run({server_binary(), "-V"}, dir.path());
    BOOST_CHECK_EQUAL(version.status, 0);
    BOOST_CHECK_EQUAL(version.out.substr(0, version.out.find('\n')), "qed-nbd " QED_VERSION);
}

BOOST_AUTO_TEST_SUITE_END()
