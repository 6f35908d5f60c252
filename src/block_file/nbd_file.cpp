// SPDX-License-Identifier: BSL-1.0
// The NBD backend. Every transfer becomes one or more libnbd commands
// (nbd_aio_pread / nbd_aio_pwrite / nbd_aio_flush / nbd_aio_zero); the
// socket libnbd owns is watched (through a duplicate of its descriptor, as an
// Asio generic stream socket: libnbd closes its own descriptor inside its
// calls when a connection dies, and the duplicate stays registered with the
// reactor until we close it) in the direction nbd_aio_get_direction asks for, and nbd_aio_notify_read/write
// move libnbd's state machine on. libnbd calls a command's completion
// callback from inside those notify calls; it only records the result, and
// the request's handler is posted to the file's executor, never run there.
//
// Readability is watched with a one-byte MSG_PEEK receive, not a plain
// wait: libnbd stops reading at the end of a reply even when more replies
// are already buffered, and Asio's epoll reactor is edge-triggered, so a
// wait would not wake for bytes that had arrived before it was queued
// (bench/remote hung that way); a peek completes at once while bytes are
// there. Write waits re-check with poll() after queueing, for the edge
// another thread's reactor may have taken. The socket is watched for
// replies only while commands are in flight, and idle waits are cancelled,
// so an idle connection keeps no work on the io_context (run() returns).
//
// An export's size is fixed: size() is its capacity, async_resize can't
// grow it (ENOSPC, with a line naming the export), and writes past the end
// fail the same way without sending anything. Reads past the end give zeros.
//
// Scatter-gather: libnbd takes one buffer per command. A buffer of 64 KiB
// or more gets a command of its own (no copy); runs of smaller neighbours
// are gathered into one bounce buffer per command, so a request of many
// small pieces doesn't become many round trips.
//
// Reconnection (QEMU's reconnect-delay, file_options::reconnect_delay):
// every command keeps what it needs to be sent again (operation, range,
// buffer). libnbd completes the commands of a connection that dies with an
// error from inside the notify call; those completions are only noted, and
// once the call has returned, settle() looks at the handle: still alive,
// they were the server's own errors and fail their requests; dead, the
// connection was lost. Without a delay the commands then fail with EIO.
// With one, they are parked, a new handle connects asynchronously (libnbd's
// nbd_aio_connect_uri, its socket watched like the old one's), attempts
// repeat with a growing pause, and once a connection is made to the same
// export (same size, same capabilities) the parked commands are sent again
// in the order they were first sent. Requests started meanwhile are parked
// too. When the delay runs out first, every parked request fails with EIO,
// and so does each new one until a connection is back: each such request
// also starts one attempt (at most one a second) in the background, so a
// server that came back is found by the next requests (as QEMU does after
// the delay). Reads, writes and write-zeroes sent twice give the same bytes;
// a flush sent again on the new connection covers what the server holds.
// Each lost and each re-established connection is one line in the log.
#include "block_file/nbd_file.hpp"

#include <fcntl.h>
#include <libnbd.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/connect.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/container/small_vector.hpp>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <optional>
#include <string_view>
#include <thread>

#include "block_file/posix_io.hpp"
#include "block_file/uri.hpp"
#include "qed/error.hpp"

namespace qed::detail {

bool is_nbd_name(std::string_view name) noexcept {
    for (std::string_view scheme :
         {"nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://", "nbds+vsock://"})
        if (name.starts_with(scheme)) return true;
    return false;
}

namespace {

namespace asio = boost::asio;
using socket_type = asio::generic::stream_protocol::socket;
using clock_type = std::chrono::steady_clock;

/// NBD's default limit when the server does not advertise one (the spec's 32 MiB).
constexpr std::uint64_t default_max_request = 32ull << 20;
/// libnbd refuses larger reads and writes.
constexpr std::uint64_t libnbd_max_request = 64ull << 20;
/// Buffers at least this large travel in their own command, without a copy.
constexpr std::size_t own_command_min = 64 * 1024;
/// Write-zeroes commands carry a 32-bit length: keep well below.
constexpr std::uint64_t max_zero_request = 1ull << 30;
/// Pause after the first failed reconnection attempt; it doubles up to the maximum.
constexpr std::chrono::milliseconds first_backoff{50};
constexpr std::chrono::milliseconds max_backoff{1000};
/// A reconnection attempt whose handshake has not finished by then is given up.
constexpr std::chrono::seconds attempt_limit{10};
/// After reconnect-delay ran out, requests start an attempt at most this often.
constexpr std::chrono::seconds away_attempt_gap{1};

class nbd_file;

/// One operation of the block file interface: one or more NBD commands.
struct request {
    std::shared_ptr<nbd_file> file;
    io_handler ioh;
    op_handler oph;
    std::size_t bytes = 0;
    unsigned pending = 1;  // a guard while commands are being issued
    int error = 0;
};

enum class op : unsigned char { read, write, flush, zero };

const char* op_name(op o) {
    switch (o) {
        case op::read:
            return "read";
        case op::write:
            return "write";
        case op::flush:
            return "flush";
        case op::zero:
            return "write zeroes";
    }
    return "?";
}

/// One NBD command, with what it takes to send it again on a new
/// connection. Gathered pieces travel through `bounce`; for a read,
/// `scatter` says where its bytes go once it completes.
/// Ownership: created per request by the file, deleted once its handler is
/// handed over (held by the file across a reconnection).
struct command {
    request* req = nullptr;
    op what = op::read;
    bool fua = false;
    bool reported = false;  // its completion callback ran with an error
    std::uint64_t offset = 0;
    std::uint64_t len = 0;
    std::byte* data = nullptr;  // read into / written from (the bounce buffer when gathered)
    std::unique_ptr<std::byte[]> bounce;
    boost::container::small_vector<asio::mutable_buffer, 8> scatter;
    int error = 0;
    std::string why;  // libnbd's words when it refused to send the command
};

struct piece {
    std::byte* data;
    std::size_t len;
};

/// A new libnbd handle with the settings of every connection of a file.
nbd_handle* new_handle() {
    nbd_handle* h = ::nbd_create();
    // Alignment is the server's business: it refuses what it can't do.
    if (h) ::nbd_set_strict_mode(h, LIBNBD_STRICT_MASK & ~LIBNBD_STRICT_ALIGN);
    return h;
}

bool is_dead(nbd_handle* h) {
    return ::nbd_aio_is_dead(h) == 1 || ::nbd_aio_is_closed(h) == 1;
}

/// What a connected export offers (what requests are split and checked by).
struct export_info {
    std::uint64_t size = 0;
    bool read_only = false;
    bool can_flush = false;
    bool can_fua = false;
    bool can_zero = false;
    std::size_t align = 1;
    std::uint64_t max_request = default_max_request;

    static export_info of(nbd_handle* h) {
        export_info i;
        i.size = static_cast<std::uint64_t>(std::max<std::int64_t>(::nbd_get_size(h), 0));
        i.read_only = ::nbd_is_read_only(h) == 1;
        i.can_flush = ::nbd_can_flush(h) == 1;
        i.can_fua = ::nbd_can_fua(h) == 1;
        i.can_zero = ::nbd_can_zero(h) == 1;
        const std::int64_t min = ::nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
        i.align = min > 1 ? static_cast<std::size_t>(min) : 1;
        const std::int64_t max = ::nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
        i.max_request = std::min<std::uint64_t>(max > 0 ? static_cast<std::uint64_t>(max) : default_max_request,
                                                libnbd_max_request);
        i.max_request = std::max<std::uint64_t>(i.max_request / i.align * i.align, i.align);
        return i;
    }

    /// Whether commands made for `old` can go to this export: the same
    /// size, and nothing they use taken away.
    std::string differs_from(const export_info& old, bool writing) const {
        if (size != old.size)
            return "its size is " + std::to_string(size) + " bytes, not " + std::to_string(old.size) + " as before";
        if (writing && read_only) return "it is read-only now";
        if ((old.can_flush && !can_flush) || (old.can_fua && !can_fua) || (old.can_zero && !can_zero))
            return "it lost flush, FUA or write-zeroes support";
        if (align != old.align || max_request != old.max_request) return "its block size limits changed";
        return {};
    }
};

asio::generic::stream_protocol protocol_of(int fd) {
    ::sockaddr_storage a{};
    ::socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<::sockaddr*>(&a), &len);
    return asio::generic::stream_protocol(a.ss_family, 0);
}

/// An Asio socket on a duplicate of the handle's descriptor (see the top of
/// the file). Empty, with `ec` set, when there is none or it can't be watched.
std::optional<socket_type> watch(const asio::any_io_executor& ex, nbd_handle* h, std::error_code& ec) {
    const int fd = ::nbd_aio_get_fd(h);
    if (fd < 0) {
        ec = errno_code(ENOTCONN);
        return std::nullopt;
    }
    const int own = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0) {
        ec = errno_code(errno);
        return std::nullopt;
    }
    std::optional<socket_type> s(std::in_place, ex);
    boost::system::error_code bec;
    s->assign(protocol_of(own), own, bec);
    if (bec) {
        ::close(own);
        ec = bec;
        return std::nullopt;
    }
    ec.clear();
    return s;
}

// ---- connecting -------------------------------------------------------------
//
// For nbd:// and nbd+unix:// URIs without extra query parameters the file
// makes the connection itself and hands the socket to libnbd
// (nbd_connect_socket, with the URI's export name), after peeking at the
// server's first bytes: an oldstyle server may greet with transmission
// flags 0, without the HAS_FLAGS bit the protocol says is always set (QEMU's
// own test server, nbd-fault-injector.py, does). QEMU's client takes that as
// "no optional commands"; libnbd refuses the handshake ("invalid eflags ==
// 0"). For such a server the file reads the greeting, sets HAS_FLAGS
// (nothing else: the export offers what the server said, which is nothing
// optional) and gives libnbd one end of a socket pair with that greeting
// waiting in it; a relay on the executor then carries the bytes of the
// transmission phase between the pair and the server unchanged. Peeking
// consumes nothing, so every other server talks to libnbd directly (and a
// server that takes one connection only is not spent on a probe). Other
// URIs (TLS, vsock, more query parameters) go to nbd_connect_uri.

/// The oldstyle greeting: "NBDMAGIC", the oldstyle magic, size, flags, zeros.
constexpr std::size_t greeting_size = 152;
using greeting = std::array<unsigned char, greeting_size>;
/// Bytes that tell an oldstyle greeting from a newstyle one.
constexpr std::size_t magic_size = 16;

/// What the first bytes of a greeting say: more bytes needed, a server
/// libnbd talks to itself, or one that needs the relay.
enum class greeting_kind { incomplete, direct, relay };

greeting_kind classify(const unsigned char* g, std::size_t n) {
    static constexpr unsigned char oldstyle[magic_size] = {'N',  'B',  'D',  'M',  'A',  'G',  'I',  'C',
                                                           0x00, 0x00, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53};
    if (n < magic_size) return greeting_kind::incomplete;
    if (std::memcmp(g, oldstyle, magic_size) != 0) return greeting_kind::direct;
    if (n < greeting_size) return greeting_kind::incomplete;
    return g[26] == 0 && g[27] == 0 ? greeting_kind::relay : greeting_kind::direct;
}

/// A server the file connects to itself.
struct plain_server {
    asio::generic::stream_protocol::endpoint endpoint;
    std::string export_name;
};

/// The server and export of a plain nbd:// or nbd+unix:// URI; nullopt
/// for the URIs left to libnbd (see above), or a TCP host that does not
/// resolve (libnbd then says so in its words).
std::optional<plain_server> plain_server_of(const std::string& uri) {
    std::string_view u(uri);
    const bool unix_socket = u.starts_with("nbd+unix://");
    if (!unix_socket && !u.starts_with("nbd://")) return std::nullopt;
    u.remove_prefix(unix_socket ? 11 : 6);
    const auto q = u.find('?');
    const std::string_view query = q == std::string_view::npos ? std::string_view{} : u.substr(q + 1);
    const std::string_view before = u.substr(0, q);
    const auto slash = before.find('/');
    const std::string_view authority = before.substr(0, slash);
    plain_server out;
    if (slash != std::string_view::npos) out.export_name = percent_decoded(before.substr(slash + 1));
    if (unix_socket) {
        if (!authority.empty() || !query.starts_with("socket=") || query.find('&') != std::string_view::npos)
            return std::nullopt;
        const std::string path = percent_decoded(query.substr(7));
        if (path.empty() || path.size() >= sizeof(::sockaddr_un::sun_path)) return std::nullopt;
        out.endpoint = asio::local::stream_protocol::endpoint(path);
        return out;
    }
    if (!query.empty() || authority.empty()) return std::nullopt;
    std::string host, port = "10809";
    if (authority.starts_with("[")) {
        const auto close = authority.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        host = std::string(authority.substr(1, close - 1));
        if (authority.size() > close + 2 && authority[close + 1] == ':')
            port = std::string(authority.substr(close + 2));
    } else {
        const auto colon = authority.rfind(':');
        host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) port = std::string(authority.substr(colon + 1));
    }
    asio::io_context resolver_context;
    asio::ip::tcp::resolver resolver(resolver_context);
    boost::system::error_code ec;
    const auto found = resolver.resolve(host, port, ec);
    if (ec || found.empty()) return std::nullopt;
    out.endpoint = found.begin()->endpoint();
    return out;
}

/// Carries bytes both ways between libnbd's end of the socket pair and the
/// server until either side ends; then closes both.
class relay : public std::enable_shared_from_this<relay> {
public:
    relay(socket_type server, socket_type local) : server_(std::move(server)), local_(std::move(local)) {}

    void start() {
        pump(server_, local_, down_);
        pump(local_, server_, up_);
    }

private:
    void pump(socket_type& from, socket_type& to, std::vector<char>& buf) {
        from.async_read_some(asio::buffer(buf), [self = shared_from_this(), &from, &to, &buf](
                                                    const boost::system::error_code& ec, std::size_t n) {
            if (ec) return self->stop();
            asio::async_write(to, asio::buffer(buf.data(), n),
                              [self, &from, &to, &buf](const boost::system::error_code& wec, std::size_t) {
                                  if (wec) return self->stop();
                                  self->pump(from, to, buf);
                              });
        });
    }

    void stop() {
        boost::system::error_code ignored;
        server_.close(ignored);
        local_.close(ignored);
    }

    socket_type server_;
    socket_type local_;
    std::vector<char> down_ = std::vector<char>(256 * 1024);
    std::vector<char> up_ = std::vector<char>(256 * 1024);
};

/// Hand `server`, whose greeting `g` (flags 0) has been read from it, to a
/// relay: the libnbd end of the socket pair, with the greeting waiting in
/// it and HAS_FLAGS set. -1 with `why` on failure.
int relay_to(const asio::any_io_executor& ex, socket_type server, greeting g, std::string& why) {
    g[27] = 1;  // NBD_FLAG_HAS_FLAGS
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        why = std::string("socketpair: ") + std::strerror(errno);
        return -1;
    }
    // The pair's buffer holds the greeting: libnbd's handshake reads it at once.
    if (::send(sv[1], g.data(), g.size(), MSG_NOSIGNAL) != static_cast<::ssize_t>(g.size())) {
        why = std::string("socketpair: ") + std::strerror(errno);
        ::close(sv[0]);
        ::close(sv[1]);
        return -1;
    }
    socket_type local(ex);
    boost::system::error_code bec;
    local.assign(asio::generic::stream_protocol(AF_UNIX, 0), sv[1], bec);
    if (bec) {
        why = bec.message();
        ::close(sv[0]);
        ::close(sv[1]);
        return -1;
    }
    std::make_shared<relay>(std::move(server), std::move(local))->start();
    return sv[0];
}

/// A descriptor handed to libnbd: non-blocking, as its state machine wants.
int nonblocking(int fd) {
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl >= 0) ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    return fd;
}

/// Peek at the greeting of a connected (blocking) socket: relay or direct,
/// or incomplete when the server closed or sent nothing usable in time.
greeting_kind peek_greeting(socket_type& s, greeting& g) {
    const auto until = clock_type::now() + std::chrono::seconds(30);
    for (;;) {
        boost::system::error_code ec;
        const std::size_t n = s.receive(asio::buffer(g), asio::socket_base::message_peek, ec);
        if (ec || n == 0) return greeting_kind::incomplete;
        const greeting_kind k = classify(g.data(), n);
        if (k != greeting_kind::incomplete || clock_type::now() > until) return k;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the rest is on its way
    }
}

class nbd_file final : public block_file, public std::enable_shared_from_this<nbd_file> {
public:
    nbd_file(asio::any_io_executor ex, nbd_handle* h, socket_type socket, std::string uri, const file_options& options)
        : ex_(std::move(ex)),
          h_(h),
          socket_(std::move(socket)),
          uri_(std::move(uri)),
          read_only_(options.read_only),
          log_(options.log),
          notice_(options.notice ? options.notice : options.log),
          reconnect_delay_(options.reconnect_delay),
          deadline_timer_(ex_),
          retry_timer_(ex_),
          attempt_timer_(ex_) {
        info_ = export_info::of(h);
        // Loop detection compares identities: the same URI is the same export.
        identity_ = {0x4e4244ull << 40, std::hash<std::string>{}(uri_)};
    }

    ~nbd_file() override {
        // No command is in flight or parked (each holds the file). Ask the
        // server to let go (queued and sent without waiting), then close.
        boost::system::error_code ignored;
        if (socket_) socket_->close(ignored);
        if (link_ == link::up) ::nbd_aio_disconnect(h_, 0);
        ::nbd_close(h_);
        if (trying_socket_) trying_socket_->close(ignored);
        if (trying_) ::nbd_close(trying_);
    }

    executor_type get_executor() const override { return ex_; }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        auto* req = start();
        req->ioh.swap(handler);
        boost::container::small_vector<piece, 8> pieces;
        std::uint64_t pos = offset;
        const std::uint64_t size = info_.size;
        for (const auto& b : buffers) {
            auto* p = static_cast<std::byte*>(b.data());
            // Past the end of the export: zeros.
            const std::size_t in =
                pos >= size ? 0 : static_cast<std::size_t>(std::min<std::uint64_t>(b.size(), size - pos));
            if (in) pieces.push_back({p, in});
            std::memset(p + in, 0, b.size() - in);
            pos += b.size();
            req->bytes += b.size();
        }
        issue(req, false, false, offset, pieces);
    }

    void async_write_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                        io_handler handler) override {
        write(offset, buffers, false, std::move(handler));
    }

    void async_write_fua_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                            io_handler handler) override {
        if (!info_.can_fua) return block_file::async_write_fua_at(offset, buffers, std::move(handler));
        write(offset, buffers, true, std::move(handler));
    }

    void async_flush(op_handler handler) override {
        auto* req = start();
        req->oph.swap(handler);
        // A server without a flush command has no volatile cache to flush.
        if (info_.can_flush) send(add(req, op::flush, 0, 0, nullptr, false));
        settle();
        arm();
        done_one(req);
    }

    void async_resize(std::uint64_t size, op_handler handler) override {
        std::error_code ec;
        if (read_only_)
            ec = errno_code(EBADF);
        else if (size > info_.size)
            ec = refuse_past_end("cannot grow the file to " + std::to_string(size) + " bytes");
        // Shrinking keeps the bytes: fixed_size() tells the image so.
        asio::post(ex_, [h = std::move(handler), ec]() mutable { std::move(h)(ec); });
    }

    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        if (read_only_ || !info_.can_zero) return block_file::async_punch_hole(offset, length, std::move(handler));
        auto* req = start();
        req->oph.swap(handler);
        // Write-zeroes without NO_HOLE: the server may deallocate, and the
        // range reads as zeros afterwards (TRIM would not promise that).
        const std::uint64_t end = std::min(offset + length, info_.size);
        for (std::uint64_t pos = offset; pos < end;) {
            const std::uint64_t n = std::min(end - pos, max_zero_request);
            send(add(req, op::zero, pos, n, nullptr, false));
            pos += n;
        }
        settle();
        arm();
        done_one(req);
    }

    std::uint64_t size(std::error_code& ec) const override {
        ec.clear();
        return info_.size;
    }
    std::size_t alignment() const noexcept override { return info_.align; }
    bool fixed_size() const noexcept override { return true; }
    file_identity identity() const noexcept override { return identity_; }
    bool read_only() const noexcept override { return read_only_; }
    const char* backend_name() const noexcept override { return "nbd"; }

private:
    /// The state of the connection.
    enum class link {
        up,       ///< connected: commands go to h_
        waiting,  ///< lost, within reconnect-delay: commands are parked, attempts run
        away,     ///< lost, no delay or the delay ran out: commands fail with EIO
    };

    request* start() { return new request{shared_from_this(), {}, {}, 0, 1, 0}; }

    void write(std::uint64_t offset, std::span<const asio::const_buffer> buffers, bool fua, io_handler handler) {
        auto* req = start();
        req->ioh.swap(handler);
        boost::container::small_vector<piece, 8> pieces;
        for (const auto& b : buffers) {
            if (b.size()) pieces.push_back({static_cast<std::byte*>(const_cast<void*>(b.data())), b.size()});
            req->bytes += b.size();
        }
        if (read_only_) {
            req->error = EBADF;
        } else if (offset > info_.size || req->bytes > info_.size - offset) {
            req->error =
                refuse_past_end("write of " + std::to_string(req->bytes) + " bytes at offset " + std::to_string(offset))
                    .value();
        } else {
            return issue(req, true, fua, offset, pieces);
        }
        done_one(req);
    }

    std::error_code refuse_past_end(const std::string& what) {
        if (!logged_full_ && log_) {
            log_(uri_ + ": " + what + ": past the end of the export (" + std::to_string(info_.size) +
                 " bytes, fixed by the server): no space left");
            logged_full_ = true;
        }
        return errno_code(ENOSPC);
    }

    // Turn contiguous pieces at `offset` into commands (see the top of the file).
    void issue(request* req, bool writing, bool fua, std::uint64_t offset, std::span<const piece> pieces) {
        const op what = writing ? op::write : op::read;
        const std::uint64_t max_request = info_.max_request;
        const std::size_t align = info_.align;
        boost::container::small_vector<piece, 8> group;
        std::uint64_t group_at = offset;
        std::uint64_t group_len = 0;
        std::uint64_t pos = offset;
        auto flush_group = [&] {
            if (group.size() == 1) {
                send(add(req, what, group_at, group[0].len, group[0].data, fua));
            } else if (!group.empty()) {
                command* cmd = add(req, what, group_at, group_len, nullptr, fua);
                cmd->bounce = std::make_unique_for_overwrite<std::byte[]>(group_len);
                cmd->data = cmd->bounce.get();
                std::size_t at = 0;
                for (const auto& p : group) {
                    if (writing)
                        std::memcpy(cmd->bounce.get() + at, p.data, p.len);
                    else
                        cmd->scatter.emplace_back(p.data, p.len);
                    at += p.len;
                }
                send(cmd);
            }
            group.clear();
            group_len = 0;
        };
        for (piece p : pieces) {
            while (p.len) {
                const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(p.len, max_request));
                const bool aligned = pos % align == 0 && (pos + n) % align == 0;
                if (n >= own_command_min && aligned) {
                    flush_group();
                    send(add(req, what, pos, n, p.data, fua));
                } else {
                    if (group_len + n > max_request) flush_group();
                    if (group.empty()) group_at = pos;
                    group.push_back({p.data, n});
                    group_len += n;
                }
                p.data += n;
                p.len -= n;
                pos += n;
            }
        }
        flush_group();
        settle();
        arm();
        done_one(req);
    }

    /// A new command of `req` (counted in its pending commands).
    static command* add(request* req, op what, std::uint64_t at, std::uint64_t len, std::byte* data, bool fua) {
        auto* cmd = new command{};
        cmd->req = req;
        cmd->what = what;
        cmd->fua = fua;
        cmd->offset = at;
        cmd->len = len;
        cmd->data = data;
        ++req->pending;
        return cmd;
    }

    // Send a command on the connection, park it while one is awaited, or
    // fail it when there is none. A refusal from libnbd is noted in
    // failed_ (settle() decides).
    void send(command* cmd) {
        if (link_ == link::waiting) return parked_.push_back(cmd);
        if (link_ == link::away) {
            kick();
            return finish(cmd, EIO);
        }
        const nbd_completion_callback cb{&nbd_file::on_complete, cmd, nullptr};
        std::int64_t cookie = -1;
        switch (cmd->what) {
            case op::read:
                cookie = ::nbd_aio_pread(h_, cmd->data, cmd->len, cmd->offset, cb, 0);
                break;
            case op::write:
                cookie = ::nbd_aio_pwrite(h_, cmd->data, cmd->len, cmd->offset, cb, cmd->fua ? LIBNBD_CMD_FLAG_FUA : 0);
                break;
            case op::flush:
                cookie = ::nbd_aio_flush(h_, cb, 0);
                break;
            case op::zero:
                cookie = ::nbd_aio_zero(h_, cmd->len, cmd->offset, cb, 0);
                break;
        }
        if (cookie != -1 || cmd->reported) return;
        // Not sent, and libnbd calls no callback for it.
        const int e = ::nbd_get_errno();
        cmd->error = e ? e : EIO;
        cmd->why = ::nbd_get_error() ? ::nbd_get_error() : "";
        last_error_ = cmd->why;
        failed_.push_back(cmd);
    }

    static int on_complete(void* user, int* error) {
        auto* cmd = static_cast<command*>(user);
        if (*error) {
            // Decided once the libnbd call that completed it has returned:
            // the server's error, or a connection that died (settle()).
            cmd->error = *error;
            cmd->reported = true;
            cmd->req->file->failed_.push_back(cmd);
            return 1;
        }
        if (!cmd->scatter.empty()) {
            std::size_t at = 0;
            for (const auto& b : cmd->scatter) {
                std::memcpy(b.data(), cmd->bounce.get() + at, b.size());
                at += b.size();
            }
        }
        finish(cmd, 0);
        return 1;  // retire the command
    }

    // After every libnbd call on h_ that may complete or refuse commands:
    // a dead handle is a lost connection (its failed commands are sent
    // again when reconnection is on); on a live one they failed for good.
    void settle() {
        if (link_ == link::up && is_dead(h_)) lost();
        if (failed_.empty()) return;
        std::vector<command*> failed;
        failed.swap(failed_);
        for (command* cmd : failed) {
            if (link_ == link::waiting) {
                cmd->reported = false;
                parked_.push_back(cmd);
            } else if (link_ == link::away) {
                finish(cmd, EIO);
            } else {
                if (!cmd->why.empty()) note_failure(std::string(op_name(cmd->what)) + ": " + cmd->why);
                finish(cmd, cmd->error);
            }
        }
    }

    static void finish(command* cmd, int error) {
        request* req = cmd->req;
        if (error && !req->error) req->error = error;
        delete cmd;
        done_one(req);
    }

    // The last command of a request: post its handler (with the file, so
    // the file is let go on the executor, never inside a libnbd call).
    static void done_one(request* req) {
        if (--req->pending != 0) return;
        const std::error_code ec = req->error ? errno_code(req->error) : std::error_code{};
        auto file = std::move(req->file);
        const auto ex = file->ex_;
        if (req->ioh) {
            asio::post(ex, [h = std::move(req->ioh), file, ec, n = ec ? std::size_t{0} : req->bytes]() mutable {
                std::move(h)(ec, n);
            });
        } else {
            asio::post(ex, [h = std::move(req->oph), file, ec]() mutable { std::move(h)(ec); });
        }
        delete req;
    }

    bool wants_write(nbd_handle* h) const { return (::nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_WRITE) != 0; }

    // Wait on the connection's socket in the directions libnbd asks for:
    // writable while it has bytes to send, readable while replies are due.
    void arm() {
        if (link_ != link::up || !socket_) return;
        const unsigned dir = ::nbd_aio_get_direction(h_);
        const bool want_write = (dir & LIBNBD_AIO_DIRECTION_WRITE) != 0;
        const bool want_read = (dir & LIBNBD_AIO_DIRECTION_READ) && ::nbd_aio_in_flight(h_) > 0;
        const unsigned gen = gen_;
        if (want_write && !write_wait_) {
            write_wait_ = true;
            socket_->async_wait(asio::socket_base::wait_write, [self = shared_from_this(), gen](const auto& ec) {
                if (gen != self->gen_) return;  // a connection that is gone
                self->write_wait_ = false;
                if (!ec) self->on_writable();
                self->arm();
            });
            ::pollfd p{socket_->native_handle(), POLLOUT, 0};
            if (::poll(&p, 1, 0) == 1 && (p.revents & POLLOUT)) {
                asio::post(ex_, [self = shared_from_this(), gen] {
                    if (gen != self->gen_) return;
                    self->on_writable();
                    self->arm();
                });
            }
        }
        if (want_read && !read_wait_) {
            read_wait_ = true;
            socket_->async_receive(asio::buffer(&peek_, 1), asio::socket_base::message_peek,
                                   [self = shared_from_this(), gen](const auto& ec, std::size_t) {
                                       if (gen != self->gen_) return;
                                       self->read_wait_ = false;
                                       // Bytes, end of file or an error: libnbd reads and finds out.
                                       if (ec != asio::error::operation_aborted) {
                                           self->notify(::nbd_aio_notify_read(self->h_));
                                           self->settle();
                                       }
                                       self->arm();
                                   });
        }
        // Nothing to wait for: let go of waits still queued (a write wait
        // whose edge never comes), so the io_context can run out of work.
        if (!want_read && !want_write && (read_wait_ || write_wait_)) {
            boost::system::error_code ignored;
            socket_->cancel(ignored);
        }
    }

    void on_writable() {
        if (link_ != link::up || !wants_write(h_)) return;
        notify(::nbd_aio_notify_write(h_));
        settle();
    }

    // A failing notify means the connection is gone; libnbd has completed
    // every command in flight with an error (settle() sees to them).
    void notify(int r) {
        if (r == -1 && ::nbd_get_error()) last_error_ = ::nbd_get_error();
    }

    void note_failure(const std::string& what) {
        if (logged_failure_ || !log_) return;
        logged_failure_ = true;
        log_(uri_ + ": " + what);
    }

    void log(const std::string& line) {
        if (log_) log_(uri_ + ": " + line);
    }
    void notice(const std::string& line) {
        if (notice_) notice_(uri_ + ": " + line);
    }

    std::string delay_text() const { return "reconnect-delay=" + std::to_string(reconnect_delay_); }

    // ---- reconnection ------------------------------------------------------

    // h_ died: stop watching it; without a delay that is the end of the
    // connection, with one the waiting begins.
    void lost() {
        close_socket();
        const std::string why = last_error_.empty() ? std::string("the server closed the connection") : last_error_;
        last_error_.clear();
        if (reconnect_delay_ == 0) {
            link_ = link::away;
            log("connection lost: " + why);
            return;
        }
        link_ = link::waiting;
        notice("connection lost: " + why + "; reconnecting (requests wait up to " + std::to_string(reconnect_delay_) +
               " s, " + delay_text() + ")");
        backoff_ = first_backoff;
        logged_mismatch_ = false;
        deadline_timer_.expires_after(std::chrono::seconds(reconnect_delay_));
        deadline_timer_.async_wait([w = weak_from_this()](const boost::system::error_code& ec) {
            auto self = w.lock();
            if (!ec && self) self->on_deadline();
        });
        // (Posted: settle() is still handing out the failed commands.)
        asio::post(ex_, [w = weak_from_this()] {
            if (auto self = w.lock(); self && self->link_ == link::waiting) self->attempt();
        });
    }

    void close_socket() {
        boost::system::error_code ignored;
        if (socket_) socket_->close(ignored);  // waits end as aborted (and find another generation)
        socket_.reset();
        ++gen_;
        read_wait_ = write_wait_ = false;
    }

    // reconnect-delay ran out without a connection.
    void on_deadline() {
        if (link_ != link::waiting) return;
        link_ = link::away;
        log("no connection within " + delay_text() + ": requests fail with EIO until the server is back");
        retry_timer_.cancel();  // a running attempt may still finish; no new ones until requests come
        std::deque<command*> parked;
        parked.swap(parked_);
        for (command* cmd : parked) finish(cmd, EIO);
    }

    // After the delay: a request that fails starts an attempt in the
    // background (one at a time, at most one a second).
    void kick() {
        if (reconnect_delay_ == 0 || trying_ || connecting_) return;
        const auto now = clock_type::now();
        if (now - last_kick_ < away_attempt_gap) return;
        last_kick_ = now;
        asio::post(ex_, [w = weak_from_this()] {
            if (auto self = w.lock(); self && self->link_ == link::away) self->attempt();
        });
    }

    // Start connecting a new handle (asynchronously).
    void attempt() {
        if (trying_ || connecting_) return;
        if (auto server = plain_server_of(uri_)) return attempt_plain(std::move(*server));
        nbd_handle* h = new_handle();
        if (!h) return retry_later();
        if (::nbd_aio_connect_uri(h, uri_.c_str()) == -1) {
            ::nbd_close(h);
            return retry_later();
        }
        handshake(h);
    }

    // The connection of `h` has begun: watch it through the handshake.
    void handshake(nbd_handle* h) {
        std::error_code ec;
        auto s = is_dead(h) ? std::nullopt : watch(ex_, h, ec);
        if (!s) {
            ::nbd_close(h);
            return retry_later();
        }
        trying_ = h;
        trying_socket_ = std::move(s);
        try_read_wait_ = try_write_wait_ = false;
        const unsigned gen = ++try_gen_;
        attempt_timer_.expires_after(attempt_limit);
        attempt_timer_.async_wait([w = weak_from_this(), gen](const boost::system::error_code& wec) {
            auto self = w.lock();
            if (!wec && self && gen == self->try_gen_ && self->trying_) self->give_up_attempt();
        });
        drive();
    }

    // A plain URI (see "connecting" above): connect, peek at the greeting,
    // then libnbd's handshake on the socket or on a relay's pair.
    void attempt_plain(plain_server server) {
        connecting_ = true;
        auto s = std::make_shared<socket_type>(ex_);
        const unsigned gen = ++try_gen_;
        attempt_timer_.expires_after(attempt_limit);
        attempt_timer_.async_wait([w = weak_from_this(), s, gen](const boost::system::error_code& ec) {
            auto self = w.lock();
            boost::system::error_code ignored;
            if (!ec && self && gen == self->try_gen_) s->close(ignored);  // the handlers below fail
        });
        s->async_connect(server.endpoint, [w = weak_from_this(), s, gen,
                                           name = std::move(server.export_name)](const boost::system::error_code& ec) {
            auto self = w.lock();
            if (!self || gen != self->try_gen_) return;
            if (ec) return self->plain_failed();
            self->peek(s, std::make_shared<greeting>(), gen, name);
        });
    }

    void peek(std::shared_ptr<socket_type> s, std::shared_ptr<greeting> g, unsigned gen, std::string name) {
        s->async_receive(
            asio::buffer(*g), asio::socket_base::message_peek,
            [w = weak_from_this(), s, g, gen, name](const boost::system::error_code& ec, std::size_t n) {
                auto self = w.lock();
                if (!self || gen != self->try_gen_) return;
                if (ec || n == 0) return self->plain_failed();
                switch (classify(g->data(), n)) {
                    case greeting_kind::incomplete: {  // the rest is on its way
                        auto t = std::make_shared<asio::steady_timer>(self->ex_, std::chrono::milliseconds(1));
                        t->async_wait([w, s, g, gen, name, t](const boost::system::error_code&) {
                            if (auto me = w.lock(); me && gen == me->try_gen_) me->peek(s, g, gen, name);
                        });
                        return;
                    }
                    case greeting_kind::direct: {
                        boost::system::error_code rec;
                        const int fd = s->release(rec);
                        if (rec) return self->plain_failed();
                        return self->plain_connected(nonblocking(fd), name);
                    }
                    case greeting_kind::relay:
                        asio::async_read(*s, asio::buffer(*g),
                                         [w, s, g, gen](const boost::system::error_code& rec, std::size_t) {
                                             auto me = w.lock();
                                             if (!me || gen != me->try_gen_) return;
                                             if (rec) return me->plain_failed();
                                             std::string why;
                                             const int fd = relay_to(me->ex_, std::move(*s), *g, why);
                                             if (fd < 0) return me->plain_failed();
                                             me->plain_connected(nonblocking(fd), {});
                                         });
                        return;
                }
            });
    }

    void plain_connected(int fd, const std::string& export_name) {
        connecting_ = false;
        nbd_handle* h = new_handle();
        if (!h || ::nbd_set_export_name(h, export_name.c_str()) == -1 || ::nbd_aio_connect_socket(h, fd) == -1) {
            if (h) ::nbd_close(h);  // (libnbd closes fd once it took it; a handle that could not be made did not)
            return retry_later();
        }
        handshake(h);
    }

    void plain_failed() {
        connecting_ = false;
        ++try_gen_;
        attempt_timer_.cancel();
        retry_later();
    }

    void retry_later() {
        if (link_ != link::waiting) return;  // away: the next request tries again
        retry_timer_.expires_after(backoff_);
        backoff_ = std::min(backoff_ * 2, max_backoff);
        retry_timer_.async_wait([w = weak_from_this()](const boost::system::error_code& ec) {
            auto self = w.lock();
            if (!ec && self && self->link_ == link::waiting) self->attempt();
        });
    }

    void give_up_attempt() {
        ++try_gen_;
        boost::system::error_code ignored;
        if (trying_socket_) trying_socket_->close(ignored);
        trying_socket_.reset();
        attempt_timer_.cancel();
        ::nbd_close(trying_);
        trying_ = nullptr;
        retry_later();
    }

    // Move the handshake of the attempt on, as arm() does for requests.
    void drive() {
        nbd_handle* h = trying_;
        if (!h) return;
        if (::nbd_aio_is_ready(h) == 1) return connected();
        if (is_dead(h)) return give_up_attempt();
        const unsigned dir = ::nbd_aio_get_direction(h);
        const unsigned gen = try_gen_;
        auto still = [gen](nbd_file& f) { return gen == f.try_gen_ && f.trying_; };
        if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && !try_write_wait_) {
            try_write_wait_ = true;
            auto on_writable = [w = weak_from_this(), still](const boost::system::error_code& ec) {
                auto self = w.lock();
                if (!self || !still(*self)) return;
                self->try_write_wait_ = false;
                if (!ec && self->wants_write(self->trying_)) ::nbd_aio_notify_write(self->trying_);
                self->drive();
            };
            trying_socket_->async_wait(asio::socket_base::wait_write, on_writable);
            // The edge may have come before the wait was queued (see arm()).
            ::pollfd p{trying_socket_->native_handle(), POLLOUT, 0};
            if (::poll(&p, 1, 0) == 1 && (p.revents & POLLOUT))
                asio::post(ex_, [on_writable]() mutable { on_writable(boost::system::error_code{}); });
        }
        if ((dir & LIBNBD_AIO_DIRECTION_READ) && !try_read_wait_) {
            try_read_wait_ = true;
            trying_socket_->async_receive(
                asio::buffer(&try_peek_, 1), asio::socket_base::message_peek,
                [w = weak_from_this(), still](const boost::system::error_code& ec, std::size_t) {
                    auto self = w.lock();
                    if (!self || !still(*self)) return;
                    self->try_read_wait_ = false;
                    if (ec != asio::error::operation_aborted) ::nbd_aio_notify_read(self->trying_);
                    self->drive();
                });
        }
    }

    // The attempt's handshake is done: take the connection if it is the
    // same export, and send what was parked.
    void connected() {
        nbd_handle* h = trying_;
        trying_ = nullptr;
        ++try_gen_;
        attempt_timer_.cancel();
        boost::system::error_code ignored;
        trying_socket_->cancel(ignored);
        const export_info now = export_info::of(h);
        if (const std::string why = now.differs_from(info_, !read_only_); !why.empty()) {
            if (!logged_mismatch_) log("not reconnecting to the export: " + why);
            logged_mismatch_ = true;
            trying_socket_->close(ignored);
            trying_socket_.reset();
            ::nbd_aio_disconnect(h, 0);
            ::nbd_close(h);
            return retry_later();
        }
        ::nbd_close(h_);  // the dead one
        h_ = h;
        socket_ = std::move(trying_socket_);
        trying_socket_.reset();
        ++gen_;
        read_wait_ = write_wait_ = false;
        link_ = link::up;
        deadline_timer_.cancel();
        retry_timer_.cancel();
        backoff_ = first_backoff;
        notice("connection re-established");
        std::deque<command*> parked;
        parked.swap(parked_);
        for (command* cmd : parked) send(cmd);
        settle();
        arm();
    }

    asio::any_io_executor ex_;
    nbd_handle* h_;                      // the connection; dead (and kept until replaced) while link_ is not up
    std::optional<socket_type> socket_;  // watches h_ while link_ is up
    unsigned gen_ = 0;                   // which socket_ a wait was queued on
    char peek_ = 0;
    std::string uri_;
    bool read_only_;
    std::function<void(std::string_view)> log_;
    std::function<void(std::string_view)> notice_;  // lost while waiting is allowed, re-established
    export_info info_;
    file_identity identity_;
    bool write_wait_ = false;
    bool read_wait_ = false;
    bool logged_full_ = false;
    bool logged_failure_ = false;
    std::string last_error_;  // libnbd's words for the last failure on h_

    // Reconnection.
    unsigned reconnect_delay_;  // seconds; 0: none
    link link_ = link::up;
    std::vector<command*> failed_;  // completed with an error inside the libnbd call under way
    std::deque<command*> parked_;   // to send once connected again, in order
    asio::steady_timer deadline_timer_;
    asio::steady_timer retry_timer_;
    asio::steady_timer attempt_timer_;
    std::chrono::milliseconds backoff_ = first_backoff;
    clock_type::time_point last_kick_{};
    bool logged_mismatch_ = false;
    bool connecting_ = false;       // a plain attempt is connecting or peeking at the greeting
    nbd_handle* trying_ = nullptr;  // the attempt under way
    std::optional<socket_type> trying_socket_;
    unsigned try_gen_ = 0;
    bool try_read_wait_ = false;
    bool try_write_wait_ = false;
    char try_peek_ = 0;
};

/// One synchronous connection to `uri`: the handle, or null with `ec` and
/// the line to log in `why`.
nbd_handle* connect_once(const asio::any_io_executor& ex, const std::string& uri, std::error_code& ec,
                         std::string& why) {
    // A plain URI: the connection is ours (see "connecting" above).
    int fd = -1;
    std::string export_name;
    if (auto server = plain_server_of(uri)) {
        socket_type s(ex);
        boost::system::error_code bec;
        s.connect(server->endpoint, bec);
        if (bec) {
            ec = bec;
            why = "cannot connect: " + bec.message();
            return nullptr;
        }
        greeting g{};
        if (peek_greeting(s, g) == greeting_kind::relay) {
            asio::read(s, asio::buffer(g), bec);
            if (bec) {
                ec = bec;
                why = "cannot connect: reading the greeting: " + bec.message();
                return nullptr;
            }
            fd = relay_to(ex, std::move(s), g, why);
            if (fd < 0) {
                ec = errno_code(EIO);
                return nullptr;
            }
        } else {
            fd = s.release(bec);  // libnbd reads the greeting itself (and fails in its words)
            if (bec) {
                ec = bec;
                why = "cannot connect: " + bec.message();
                return nullptr;
            }
        }
        fd = nonblocking(fd);
        export_name = server->export_name;
    }
    nbd_handle* h = new_handle();
    if (!h) {
        if (fd >= 0) ::close(fd);
        ec = errno_code(::nbd_get_errno() ? ::nbd_get_errno() : ENOMEM);
        why = ::nbd_get_error() ? ::nbd_get_error() : "cannot create an NBD handle";
        return nullptr;
    }
    // libnbd reports the text of a server's refusal only as a debug
    // message: catch it during the handshake (debugging is off again for
    // the I/O that follows), so a refusal can say what the server said.
    std::string server_said;
    ::nbd_set_debug_callback(
        h, nbd_debug_callback{.callback =
                                  [](void* user, const char*, const char* msg) {
                                      static constexpr std::string_view tag = "server error message: ";
                                      const std::string_view m(msg);
                                      if (const auto at = m.find(tag); at != std::string_view::npos)
                                          *static_cast<std::string*>(user) = m.substr(at + tag.size());
                                      return 0;
                                  },
                              .user_data = &server_said,
                              .free = nullptr});
    const int user_debug = ::nbd_get_debug(h);  // LIBNBD_DEBUG=1 stays the user's choice
    ::nbd_set_debug(h, true);
    int connected = -1;
    if (fd < 0) {
        connected = ::nbd_connect_uri(h, uri.c_str());
    } else if (::nbd_set_export_name(h, export_name.c_str()) == -1) {
        ::close(fd);
    } else {
        connected = ::nbd_connect_socket(h, fd);
    }
    ::nbd_set_debug(h, user_debug == 1);  // first: with the callback gone, debug output goes to stderr
    ::nbd_clear_debug_callback(h);
    if (connected == -1) {
        const int e = ::nbd_get_errno();
        ec = errno_code(e ? e : EIO);
        // libnbd maps a server's NBD_REP_ERR_UNKNOWN (no such export) to
        // ENOENT; a server that answered with a message is that case (a
        // missing socket is ENOENT too, but no server spoke). QEMU's words,
        // then the server's own.
        if (e == ENOENT && !server_said.empty())
            why = "Requested export not available\nserver reported: " + server_said;
        else
            why = std::string("cannot connect: ") + ::nbd_get_error();
        ::nbd_close(h);
        return nullptr;
    }
    return h;
}

}  // namespace

std::shared_ptr<block_file> open_nbd_file(const asio::any_io_executor& ex, const std::string& uri,
                                          const file_options& options, std::error_code& ec) {
    ec.clear();
    auto fail = [&](int e, const std::string& why, nbd_handle* h) -> std::shared_ptr<block_file> {
        ec = errno_code(e ? e : EIO);
        if (options.log) options.log(uri + ": " + why);
        if (h) ::nbd_close(h);
        return nullptr;
    };
    // open-timeout: connection attempts repeat (a pause between them) until
    // one succeeds or the time is up; the last failure is the one reported.
    const auto until = clock_type::now() + std::chrono::seconds(options.open_timeout);
    std::string why;
    nbd_handle* h = nullptr;
    for (;;) {
        h = connect_once(ex, uri, ec, why);
        if (h || options.open_timeout == 0 || clock_type::now() >= until) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!h) return fail(ec.value(), why, nullptr);
    if (::nbd_get_size(h) < 0) return fail(::nbd_get_errno(), ::nbd_get_error(), h);
    const bool export_read_only = ::nbd_is_read_only(h) == 1;
    if (!options.read_only && export_read_only) {
        ::nbd_aio_disconnect(h, 0);
        return fail(EROFS, "the export is read-only", h);
    }
    auto socket = watch(ex, h, ec);
    if (!socket) return fail(ec.value(), std::string("cannot watch the connection: ") + ec.message(), h);
    return std::make_shared<nbd_file>(ex, h, std::move(*socket), uri, options);
}

}  // namespace qed::detail
