// SPDX-License-Identifier: BSL-1.0
#include "server/nbd_server.hpp"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>

namespace qed::nbd {

namespace {

/// "127.0.0.1:40322", "[::1]:40322" or "unix socket" for the log.
std::string peer_name(const socket_type& socket) {
    boost::system::error_code ec;
    const auto ep = socket.remote_endpoint(ec);
    if (ec) return "unknown address";
    const auto* sa = static_cast<const sockaddr*>(ep.data());
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
        char host[NI_MAXHOST];
        char port[NI_MAXSERV];
        if (::getnameinfo(sa, static_cast<socklen_t>(ep.size()), host, sizeof host, port, sizeof port,
                          NI_NUMERICHOST | NI_NUMERICSERV) != 0)
            return "unknown address";
        return sa->sa_family == AF_INET6 ? "[" + std::string(host) + "]:" + port : std::string(host) + ":" + port;
    }
    return "unix socket";
}

std::string directory_of(const std::string& path) {
    const auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

}  // namespace

server::server(boost::asio::io_context& ioc, server_options options)
    : ioc_(ioc),
      options_(std::move(options)),
      signals_(ioc, SIGINT, SIGTERM, SIGHUP),
      drain_timer_(ioc),
      retry_timer_(ioc) {}

server::~server() {
    // After a normal end the threads have already run out of work; after
    // an exception they are stopped here.
    for (auto& c : contexts_) c->stop();
    for (auto& t : threads_) t.join();
}

void server::error(const std::string& message) const {
    // Lines come from every thread (connections log from their export's).
    static std::mutex m;
    std::lock_guard<std::mutex> lock(m);
    std::cerr << "qed-nbd: " << message << std::endl;
}

boost::asio::any_io_executor server::executor_for(std::size_t i) const {
    const std::size_t n = contexts_.size() + 1;
    if (i % n == 0) return ioc_.get_executor();
    return contexts_[i % n - 1]->get_executor();
}

void server::tell(const std::shared_ptr<connection>& c, void (connection::*what)()) {
    // Posted, never called inline (we may be iterating over connections_).
    // A connection on our thread may still move to its export's before
    // the message runs (its handshake completing first): the message then
    // follows it there. Its home changes only on our thread, once.
    boost::asio::post(c->home(), [c, what, where = c->home()] {
        if (c->home() == where) return ((*c).*what)();
        boost::asio::post(c->home(), [c, what] { ((*c).*what)(); });
    });
}

void server::start_threads() {
    const std::size_t want = std::min<std::size_t>(std::max(1u, options_.threads), options_.exports.size());
    for (std::size_t i = 1; i < want; ++i) {
        contexts_.push_back(std::make_unique<boost::asio::io_context>(1));
        guards_.push_back(boost::asio::make_work_guard(*contexts_.back()));
    }
    for (auto& c : contexts_) threads_.emplace_back([ctx = c.get()] { ctx->run(); });
}

void server::stop_threads() {
    // Nothing is left on the extra contexts once the images are closed and
    // the connections gone: without their guards they run out and return.
    guards_.clear();
}

void server::note(const std::string& message) const {
    if (options_.verbose) error(message);
}

std::string server::describe(std::size_t i, const std::string& path) const {
    if (!options_.named_exports) return "'" + path + "'";
    return "export '" + options_.exports[i].name + "' ('" + path + "')";
}

// ---------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------

void server::start() {
    phase_ = phase::opening;
    start_threads();
    wait_for_signal();
    if (options_.tls) {
        // Credentials first: a server that cannot do TLS must not open the images.
        std::string why;
        tls_ = tls_server::create(*options_.tls, why);
        if (!tls_) {
            error("TLS credentials '" + options_.tls->creds.id + "': " + why);
            exit_code_ = 1;
            return finish();
        }
        ctx_.tls = tls_.get();
    }
    if (options_.snapshot) {
        // -s: QED overlays in a private temporary directory, one per image.
        const char* tmp = std::getenv("TMPDIR");
        std::string templ = std::string(tmp && *tmp ? tmp : "/var/tmp") + "/qed-nbd-snapshot.XXXXXX";
        if (!::mkdtemp(templ.data())) {
            error("-s: cannot create a directory for the temporary overlay in '" + templ.substr(0, templ.rfind('/')) +
                  "': " + std::strerror(errno));
            exit_code_ = 1;
            return finish();
        }
        overlay_dir_ = templ;
    }
    open_next();
}

void server::open_next() {
    const std::size_t i = exports_.size();
    if (stop_requested_) {
        phase_ = phase::draining;
        return maybe_close_image();
    }
    if (i == options_.exports.size()) return all_open();
    const export_options& e = options_.exports[i];
    // Backing files must stay inside a directory: clients must not be able
    // to make the server open arbitrary files through a crafted image.
    if (!options_.snapshot)
        return open_image(i, e.path, e.format,
                          options_.allowed_backing_dir ? *options_.allowed_backing_dir : directory_of(e.path));

    // -s: a QED overlay backed by the image (by absolute path, format as
    // given or probed). The image is only ever read; the overlay goes away
    // at exit.
    char* real = ::realpath(e.path.c_str(), nullptr);
    if (!real) {
        error("failed to open " + describe(i, e.path) + ": " + std::strerror(errno));
        exit_code_ = 1;
        phase_ = phase::draining;
        return maybe_close_image();
    }
    const std::string backing = real;
    std::free(real);
    create_options c;
    c.backing_file = backing;
    c.backing_format = e.format;
    const std::string overlay =
        overlay_dir_ +
        (options_.exports.size() == 1 ? std::string("/overlay.qed") : "/overlay-" + std::to_string(i) + ".qed");
    std::string backing_dir = options_.allowed_backing_dir ? *options_.allowed_backing_dir : directory_of(backing);
    image::async_create(
        ioc_.get_executor(), overlay, c,
        [this, i, overlay, backing_dir = std::move(backing_dir)](std::error_code ec) mutable {
            if (ec) {
                error("-s: cannot create the temporary overlay '" + overlay + "'" +
                      (options_.named_exports ? " for export '" + options_.exports[i].name + "'" : std::string()) +
                      ": " + ec.message());
                exit_code_ = 1;
                phase_ = phase::draining;
                return maybe_close_image();
            }
            overlays_.push_back(overlay);
            open_image(i, overlay, image_format::qed, std::move(backing_dir));
        });
}

void server::open_image(std::size_t i, std::string path, std::optional<image_format> format, std::string backing_dir) {
    open_options o;
    o.read_only = options_.exports[i].read_only;
    o.format = format;
    o.backend = options_.backend;
    o.direct = options_.direct;
    o.allowed_backing_dir = std::move(backing_dir);
    o.allow_remote_backing = options_.allow_remote_backing;
    o.log = [this](std::string_view line) { error(std::string(line)); };
    // Opened on its own thread's executor; the result comes back to ours.
    image::async_open(executor_for(i), path, std::move(o), [this, i, path](std::error_code ec, image img) {
        boost::asio::post(
            ioc_, [this, i, path, ec, img = std::move(img)]() mutable { on_open(i, path, ec, std::move(img)); });
    });
}

void server::wait_for_signal() {
    signals_.async_wait([this](boost::system::error_code ec, int signo) {
        if (ec) return;  // cancelled at the end
        note("signal " + std::to_string(signo) + ": shutting down");
        shutdown();
        wait_for_signal();
    });
}

void server::on_open(std::size_t i, std::string path, std::error_code ec, image img) {
    if (ec) {
        std::string line = "failed to open " + describe(i, path) + ": " + ec.message();
        if (ec == qed::errc::backing_not_allowed) line += " (--allow-backing-dir=DIR allows another directory)";
        error(line);
        exit_code_ = 1;
        phase_ = phase::draining;
        return maybe_close_image();  // the exports opened before this one
    }
    const export_options& e = options_.exports[i];
    auto x = std::make_unique<export_context>();
    x->image = std::move(img);
    x->executor = executor_for(i);
    x->path = std::move(path);
    export_info& info = x->info;
    info.name = e.name;
    info.description = e.description;
    info.size = x->image.size();
    info.max_payload = options_.lim.max_payload;
    info.flags = flag_has_flags | flag_send_flush;
    if (e.read_only)
        info.flags |= flag_read_only;
    else
        info.flags |= flag_send_fua | flag_send_write_zeroes | (options_.discard ? flag_send_trim : 0);
    // Multi-conn: every connection to an export goes to the same in-process
    // image (one cache, one file), and a flush flushes the file, so it
    // covers writes completed on any connection. Advertised only when more
    // than one client may connect: otherwise a client opening several
    // connections would wait for ever on the second one.
    if (options_.shared != 1) info.flags |= flag_can_multi_conn;
    x->writethrough = options_.writethrough;
    x->zeroes = options_.zeroes;
    x->discard = options_.discard && !e.read_only;
    exports_.push_back(std::move(x));
    open_next();
}

void server::all_open() {
    for (auto& x : exports_) {
        ctx_.exports.push_back(x.get());
        ctx_.infos.push_back(&x->info);
    }
    ctx_.lim = options_.lim;
    // The reserve: one request of the largest size (half the limit when the
    // limit is that small), so stuck clients can't lock the others out.
    budget_ = std::make_unique<memory_budget>(
        options_.memory_limit, std::min<std::size_t>(options_.lim.max_payload, options_.memory_limit / 2));
    ctx_.budget = budget_.get();
    if (options_.verbose) ctx_.log = [this](std::string_view line) { error(std::string(line)); };
    ctx_.warn = [this](std::string_view line) { error(std::string(line)); };

    std::string what;
    if (auto lec = listen(what)) {
        error(what + ": " + lec.message());
        exit_code_ = 1;
        phase_ = phase::draining;
        return maybe_close_image();
    }
    phase_ = phase::serving;
    if (!options_.pid_file.empty()) {
        std::ofstream f(options_.pid_file, std::ios::trunc);
        f << ::getpid() << '\n';
        f.close();
        if (!f) {
            error("cannot write pid file '" + options_.pid_file + "'");
            exit_code_ = 1;
            phase_ = phase::draining;
            return maybe_close_image();
        }
        wrote_pid_file_ = true;
    }
    for (std::size_t i = 0; i < exports_.size(); ++i) {
        const export_context& x = *exports_[i];
        const image_info ii = x.image.info();
        note("serving " + describe(i, x.path) + " (" + std::string(to_string(ii.format)) + ", " +
             std::to_string(x.info.size) + " bytes, " + ii.backend + (options_.direct ? ", O_DIRECT" : "") +
             (options_.exports[i].read_only ? ", read-only" : "") +
             (tls_ ? std::string(", TLS required (") +
                         (options_.tls->creds.type == tls_object::kind::psk ? "PSK" : "X.509") + ")"
                   : std::string()) +
             ") on " + what +
             (contexts_.empty() ? std::string()
                                : ", thread " + std::to_string(i % (contexts_.size() + 1) + 1) + " of " +
                                      std::to_string(contexts_.size() + 1)));
    }
    if (options_.ready) options_.ready();
    for (auto& l : listeners_) accept(*l);
}

// ---------------------------------------------------------------------------
// Listening and accepting
// ---------------------------------------------------------------------------

namespace {

/// Open, bind and listen; false with `ec` set at the first failure.
template <class Acceptor, class Endpoint>
bool open_listener(Acceptor& a, const Endpoint& ep, bool tcp, bool v6_only, boost::system::error_code& ec) {
    a.open(ep.protocol(), ec);
    if (ec) return false;
    if (tcp) {
        boost::system::error_code ignored;
        a.set_option(boost::asio::socket_base::reuse_address(true), ignored);
        if (v6_only) a.set_option(boost::asio::ip::v6_only(true), ignored);
    }
    a.bind(ep, ec);
    if (!ec) a.listen(boost::asio::socket_base::max_listen_connections, ec);
    if (ec) {
        boost::system::error_code ignored;
        a.close(ignored);
        return false;
    }
    return true;
}

}  // namespace

std::error_code server::listen(std::string& what) {
    boost::system::error_code ec;
    if (!options_.socket_path.empty()) {
        const std::string& path = options_.socket_path;
        what = "unix socket '" + path + "'";
        if (path.size() >= sizeof(sockaddr_un::sun_path)) return std::make_error_code(std::errc::filename_too_long);
        // A stale socket from an earlier run would make bind fail; anything
        // that is not a socket is left alone.
        struct stat st {};
        if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
        auto l = std::make_unique<listener>(ioc_);
        const boost::asio::generic::stream_protocol::endpoint ep{boost::asio::local::stream_protocol::endpoint(path)};
        if (!open_listener(l->acceptor, ep, false, false, ec)) return ec;
        listeners_.push_back(std::move(l));
        return {};
    }

    what = options_.bind_address + ":" + std::to_string(options_.port);
    boost::asio::ip::tcp::resolver resolver(ioc_);
    const auto results =
        resolver.resolve(options_.bind_address, std::to_string(options_.port),
                         boost::asio::ip::resolver_base::passive | boost::asio::ip::resolver_base::numeric_service, ec);
    if (ec) return ec;
    boost::system::error_code first;
    for (const auto& r : results) {
        auto l = std::make_unique<listener>(ioc_);
        const auto tcp_ep = r.endpoint();
        const boost::asio::generic::stream_protocol::endpoint ep{tcp_ep};
        if (!open_listener(l->acceptor, ep, true, tcp_ep.address().is_v6() && results.size() > 1, ec)) {
            if (!first) first = ec;
            continue;
        }
        listeners_.push_back(std::move(l));
    }
    if (listeners_.empty())
        return first ? std::error_code(first) : std::make_error_code(std::errc::address_not_available);
    return {};
}

bool server::room() const noexcept {
    return options_.shared == 0 || connections_.size() < options_.shared;
}

void server::accept(listener& l) {
    l.accepting = true;
    l.acceptor.async_accept(
        [this, &l](boost::system::error_code ec, socket_type socket) { on_accept(l, ec, std::move(socket)); });
}

void server::on_accept(listener& l, boost::system::error_code ec, socket_type socket) {
    l.accepting = false;
    if (phase_ != phase::serving) return;  // closing: the socket just goes away
    if (ec) {
        if (ec == boost::asio::error::operation_aborted) return;
        // Out of descriptors and the like: try again shortly, don't spin.
        error("accept failed: " + ec.message());
        retry_timer_.expires_after(std::chrono::milliseconds(100));
        retry_timer_.async_wait([this](boost::system::error_code tec) {
            if (!tec) resume_accepting();
        });
        return;
    }
    if (room() && parked_.empty())
        start_connection(std::move(socket));
    else
        parked_.push_back(std::move(socket));  // several listeners raced past the limit
    if (room() && parked_.empty()) accept(l);
    // Otherwise further clients wait in the listen backlog, as with qemu-nbd.
}

void server::start_connection(socket_type socket) {
    served_any_ = true;
    std::string peer = peer_name(socket);
    // A connection ends on its own thread; the server hears of it on its own.
    auto c = std::make_shared<connection>(
        std::move(socket), ctx_, next_id_++, std::move(peer),
        [this](connection& done) { boost::asio::post(ioc_, [this, c = done.shared_from_this()] { on_closed(*c); }); });
    connections_.push_back(c);
    if (ctx_.log) ctx_.log("client " + std::to_string(c->id()) + " (" + c->peer() + "): connected");
    c->start();
}

void server::resume_accepting() {
    if (phase_ != phase::serving) return;
    while (!parked_.empty() && room()) {
        socket_type s = std::move(parked_.front());
        parked_.erase(parked_.begin());
        start_connection(std::move(s));
    }
    if (!room() || !parked_.empty()) return;
    for (auto& l : listeners_)
        if (!l->accepting) accept(*l);
}

void server::on_closed(connection& c) {
    connections_.erase(std::remove_if(connections_.begin(), connections_.end(),
                                      [&c](const std::shared_ptr<connection>& p) { return p.get() == &c; }),
                       connections_.end());
    if (phase_ == phase::serving) {
        // Like qemu-nbd: without --persistent, leave after the last client.
        if (!options_.persistent && served_any_ && connections_.empty() && parked_.empty()) {
            note("last client left: shutting down");
            return shutdown();
        }
        return resume_accepting();
    }
    maybe_close_image();
}

// ---------------------------------------------------------------------------
// Shutting down
// ---------------------------------------------------------------------------

void server::shutdown() {
    switch (phase_) {
        case phase::idle:
        case phase::opening:
            stop_requested_ = true;
            return;
        case phase::serving:
            break;
        case phase::draining: {
            // Asked again: stop waiting for slow clients.
            for (auto& c : connections_) tell(c, &connection::abort);
            return;
        }
        case phase::closing:
        case phase::stopped:
            return;
    }
    phase_ = phase::draining;
    boost::system::error_code ignored;
    for (auto& l : listeners_) l->acceptor.close(ignored);
    retry_timer_.cancel();
    parked_.clear();
    // Each connection stops on its own thread; its removal comes back posted.
    for (auto& c : connections_) tell(c, &connection::stop);
    drain_timer_.expires_after(options_.drain_timeout);
    drain_timer_.async_wait([this](boost::system::error_code ec) {
        if (ec || phase_ != phase::draining) return;
        error("clients did not finish in time; closing their connections");
        for (auto& c : connections_) tell(c, &connection::abort);
    });
    maybe_close_image();
}

void server::maybe_close_image() {
    if (phase_ != phase::draining || !connections_.empty()) return;
    phase_ = phase::closing;
    drain_timer_.cancel();
    close_next(0);
}

void server::close_next(std::size_t i) {
    if (i == exports_.size()) return finish();
    image& img = exports_[i]->image;
    if (!img.is_open()) return close_next(i + 1);
    // Close finishes what is in flight, flushes and clears NEED_CHECK; on
    // the image's thread, the result coming back to ours.
    boost::asio::post(exports_[i]->executor, [this, i, &img] {
        img.async_close([this, i](std::error_code ec) {
            boost::asio::post(ioc_, [this, i, ec] {
                if (ec) {
                    error("closing " + describe(i, exports_[i]->path) + " failed: " + ec.message());
                    exit_code_ = 1;
                }
                close_next(i + 1);
            });
        });
    });
}

void server::finish() {
    phase_ = phase::stopped;
    stop_threads();
    boost::system::error_code ignored;
    signals_.cancel(ignored);
    drain_timer_.cancel();
    retry_timer_.cancel();
    for (auto& l : listeners_) l->acceptor.close(ignored);
    if (!options_.socket_path.empty() && !listeners_.empty()) ::unlink(options_.socket_path.c_str());
    if (wrote_pid_file_) ::unlink(options_.pid_file.c_str());
    if (!overlay_dir_.empty()) {
        for (const auto& o : overlays_) ::unlink(o.c_str());
        ::rmdir(overlay_dir_.c_str());
    }
    note("stopped");
}

}  // namespace qed::nbd
