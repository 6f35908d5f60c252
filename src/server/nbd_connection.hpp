// SPDX-License-Identifier: BSL-1.0
// One NBD client connection: the handshake, then the transmission phase.
//
// Threading: a connection runs on one thread at a time with no locks: the
// server's during the handshake, then its export's (--threads; a plain
// socket moves there; a TLS connection stays and posts its image requests
// to the image's thread, completions coming back). The server calls stop()
// and abort() on home(). Requests are read one after another and started on the
// image at once, so many are in flight and their replies go out in the
// order they complete. A reply writer batches whatever is ready into one
// gathered write.
//
// Lifetime: the server owns connections through shared_ptr; every pending
// operation holds one too, so a connection lives until its socket
// operations and image requests have all completed. It then calls the
// server's `closed` callback once.
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qed/image.hpp"
#include "server/nbd_handshake.hpp"

namespace qed::nbd {

/// Bounds on what one connection may make the server hold.
struct limits {
    std::uint32_t max_payload = 32u << 20;   ///< largest READ/WRITE (NBD_INFO_BLOCK_SIZE maximum)
    std::size_t max_in_flight = 64;          ///< requests started and not yet answered
    std::size_t max_buffered = 64u << 20;    ///< bytes of READ/WRITE buffers held
    std::size_t max_descriptors = 1u << 16;  ///< block status descriptors per context and reply
    std::chrono::milliseconds handshake_timeout{10000};
};

class connection;

/// Bytes of READ/WRITE buffers held by all connections of a server together
/// (besides each connection's own bound). A connection that would go over
/// waits without reading its socket (TCP backpressure) until bytes come
/// back. Fair shares: a connection that already holds bytes may not take
/// more than limit / (connections holding or waiting) while others wait, so
/// clients that never read their replies cannot keep the rest from being
/// served once bytes come back; among those within their share, first come,
/// first served (small requests don't starve large ones). Thread-safe.
///
/// A reserve keeps clients that never read their replies from locking the
/// others out: connections that already hold bytes take them only from
/// `limit - reserve` all together, so a connection with nothing in flight
/// (a newcomer, or a client that reads its replies) always finds `reserve`
/// bytes -- enough for a request of up to `reserve` bytes -- unless other
/// such connections are using them, and those give them back as soon as
/// their replies are read. Bytes held by replies a client never reads stay
/// held until it reads or disconnects; the total never exceeds the limit.
class memory_budget {
public:
    /// `reserve` (at most `limit`): bytes only connections holding none may take.
    memory_budget(std::size_t limit, std::size_t reserve) : limit_(limit), reserve_(std::min(reserve, limit)) {}
    memory_budget(const memory_budget&) = delete;
    memory_budget& operator=(const memory_budget&) = delete;

    std::size_t limit() const noexcept { return limit_; }
    std::size_t used() const;
    /// Take `n` bytes for `c` if they fit, within its share, and nobody
    /// eligible is waiting; false otherwise.
    bool try_take(const connection* c, std::size_t n);
    /// Take `n` bytes regardless (small reply metadata already built).
    void force_take(const connection* c, std::size_t n);
    /// Give bytes back; grants go to waiters whose turn it is.
    void give_back(const connection* c, std::size_t n);
    /// Wait for `n` bytes: `c->post_grant(n)` is called once they are taken
    /// on its behalf.
    void wait(const std::shared_ptr<connection>& c, std::size_t n);
    /// Leave the line (the connection is closing); no grant follows.
    void cancel(const connection* c);

private:
    struct waiter {
        const connection* who;
        std::weak_ptr<connection> c;
        std::size_t n;
    };
    using grants = std::vector<std::pair<std::shared_ptr<connection>, std::size_t>>;
    bool within_share_locked(const connection* c, std::size_t n) const;
    /// `n` more bytes for `c` stay within the limit (for a connection that
    /// holds bytes already: within the limit less the reserve).
    bool fits_locked(const connection* c, std::size_t n) const;
    bool holds_locked(const connection* c) const { return held_.count(c) != 0; }
    void grant_locked(grants& out);
    void take_locked(const connection* c, std::size_t n);

    const std::size_t limit_;
    const std::size_t reserve_;
    mutable std::mutex mutex_;
    std::size_t used_ = 0;
    std::map<const connection*, std::size_t> held_;  ///< bytes held, per connection holding any
    std::deque<waiter> waiters_;
};

/// --detect-zeroes: writes of zeros become WRITE_ZEROES (as qemu-nbd's).
enum class detect_zeroes { off, on, unmap };

/// One export: its image and how to serve it.
struct export_context {
    qed::image image;
    /// The image's executor (--threads: one of the server's io_contexts).
    boost::asio::any_io_executor executor;
    export_info info;
    std::string path;           ///< the image file, for the log
    bool discard = false;       ///< TRIM advertised (--discard=unmap): discard the range
    bool writethrough = false;  ///< every write is FUA (cache=writethrough/directsync)
    detect_zeroes zeroes = detect_zeroes::off;
};

/// What all connections of a server share: the exports and the bounds.
struct server_context {
    /// The exports, in NBD_OPT_LIST order; `infos[i]` is `&exports[i]->info`.
    std::vector<export_context*> exports;
    std::vector<const export_info*> infos;
    limits lim;
    /// Not null: the bound on buffers across all connections (and exports).
    memory_budget* budget = nullptr;
    /// Not null: TLS is required (NBD_OPT_STARTTLS before anything else).
    tls_server* tls = nullptr;
    /// Diagnostics about clients (connects, protocol violations); may be empty.
    std::function<void(std::string_view)> log;
    /// Failures of the image itself (I/O errors); may be empty.
    std::function<void(std::string_view)> warn;
};

/// Ownership: shared by the server (until it ends) and by its own
/// operations in flight (each holds shared_from_this()); it owns its socket
/// or TLS stream and the buffers of its requests.
class connection : public std::enable_shared_from_this<connection> {
public:
    using closed_handler = std::function<void(connection&)>;

    /// `peer`: the client's address, for the log.
    connection(socket_type socket, server_context& ctx, std::uint64_t id, std::string peer, closed_handler closed);
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection();

    /// Begin the handshake.
    void start();
    /// Graceful end (server shutdown): read no new requests, answer the ones
    /// in flight, then close.
    void stop();
    /// Hard end: close the socket now. Image requests in flight still run to
    /// completion (their buffers live until then); their replies are dropped.
    void abort();

    std::uint64_t id() const noexcept { return id_; }
    /// The executor the connection runs on: the handshake's, then (--threads)
    /// its export's. Read by the server on its own thread, which is the one
    /// that changes it.
    const boost::asio::any_io_executor& home() const noexcept { return home_; }
    const std::string& peer() const noexcept { return peer_; }
    /// memory_budget::wait() came through: `n` bytes were taken for us.
    /// Runs on_granted() on the connection's executor.
    void post_grant(std::size_t n);

private:
    struct transaction;
    using transaction_ptr = std::unique_ptr<transaction>;

    /// What the request reader is doing.
    enum class reader {
        handshake,  ///< negotiating
        header,     ///< waiting for a request header
        payload,    ///< reading a WRITE payload
        discard,    ///< skipping the payload of a refused WRITE
        paused,     ///< at its own limit: resumes when a reply has been written
        waiting,    ///< a request read, waiting for the server-wide memory budget
        done,       ///< no more requests will be read
    };

    void on_handshake(std::error_code ec, const session& s);
    void on_unknown_export(std::string_view name);
    void read_next();
    void on_header(boost::system::error_code ec);
    void on_granted(std::size_t n);
    void admit(transaction_ptr t);
    void proceed(transaction_ptr t, std::size_t need);
    void resume();
    void drop_pending();
    void read_payload(transaction_ptr t);
    void discard_payload(transaction_ptr t, std::uint64_t left);
    void start_request(transaction_ptr t);
    /// The image calls of a request, on the image's thread.
    void issue(transaction_ptr t);
    /// Run `f` on the connection's thread: at once, or posted there when
    /// the image lives on another (remote_image_).
    template <class F>
    void at_home(F&& f);
    std::uint32_t validate(const transaction& t, std::string& why) const;
    void reader_done();

    void on_read(transaction_ptr t, std::error_code ec);
    void on_done(transaction_ptr t, std::error_code ec);
    void on_block_status(transaction_ptr t, std::error_code ec, const std::vector<extent>& extents);

    void reply_ok(transaction_ptr t);
    void reply_error(transaction_ptr t, std::uint32_t error, std::string_view message);
    void queue_reply(transaction_ptr t);
    void write_replies();
    void on_written(std::error_code ec);
    void release(transaction_ptr t);
    void check_done();
    void log(std::string_view what) const;
    void warn(std::string_view what) const;

    nbd_stream stream_;
    server_context& ctx_;
    export_context* export_ = nullptr;         ///< chosen in the handshake
    std::optional<std::string> last_unknown_;  ///< the last unknown export name logged
    unsigned unknown_logged_ = 0;              ///< unknown export names logged so far
    std::uint64_t id_;
    std::string peer_;
    handshake_report report_;
    closed_handler closed_;
    boost::asio::steady_timer handshake_timer_;
    session session_;
    boost::asio::any_io_executor home_;
    bool handshake_over_ = false;  ///< on_handshake has run (read on the handshake's thread)
    bool remote_image_ = false;    ///< the image is on another thread: requests cross over
    reader reading_ = reader::handshake;
    bool stopping_ = false;
    bool broken_ = false;  ///< socket unusable: replies are dropped
    bool writing_ = false;
    bool finished_ = false;
    std::size_t in_flight_ = 0;  ///< requests read and not yet answered (or dropped)
    std::size_t buffered_ = 0;   ///< bytes of request buffers held
    std::array<std::byte, request_size> header_{};
    transaction_ptr pending_;              ///< read, not yet admitted (paused or waiting)
    std::vector<std::byte> scratch_;       ///< discarded payloads land here
    std::deque<transaction_ptr> replies_;  ///< ready, not yet being written
    std::vector<transaction_ptr> batch_;   ///< being written now
    std::vector<boost::asio::const_buffer> batch_buffers_;
};

}  // namespace qed::nbd
