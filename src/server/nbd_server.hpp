// SPDX-License-Identifier: BSL-1.0
// The NBD server: opens its images (one per export), listens on TCP or a
// Unix socket, runs connections, and shuts down cleanly (finish requests in
// flight, flush, close the images so NEED_CHECK is cleared).
//
// Threading: the server's own state (listeners, the connection list, the
// phases) lives on the io_context it is given, run by the caller's thread.
// With `threads` > 1 the server adds io_contexts, each run by a thread of
// its own, up to one per export; export i's image lives on context
// i % contexts (context 0 being the caller's), and a connection moves to
// its export's context after the handshake. Construct, start(), then run
// the io_context; run() returns once the server has stopped and the images
// are closed; the destructor joins the server's threads.
#pragma once

#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "qed/image.hpp"
#include "server/exports.hpp"
#include "server/nbd_connection.hpp"
#include "server/nbd_tls.hpp"

namespace qed::nbd {

struct server_options {
    /// What to serve: at least one export, names distinct.
    std::vector<export_options> exports;
    /// The exports came from --export/--dir: messages about an image name
    /// its export too (the single-image command line keeps qemu-nbd's).
    bool named_exports = false;
    bool direct = false;        ///< cache=none / directsync
    bool writethrough = false;  ///< cache=writethrough / directsync
    bool discard = false;       ///< --discard=unmap: advertise and honour TRIM
    file_backend backend = file_backend::automatic;
    std::optional<std::string> allowed_backing_dir;
    /// -s: serve a temporary QED overlay over each image (removed at
    /// exit); the images themselves are only read.
    bool snapshot = false;
    detect_zeroes zeroes = detect_zeroes::off;
    bool allow_remote_backing = false;  ///< also accept nbd:// and rbd: backing files
    std::string bind_address = "127.0.0.1";
    std::uint16_t port = 10809;
    std::string socket_path;  ///< non-empty: listen on this Unix socket instead of TCP
    unsigned shared = 1;      ///< simultaneous clients, all exports together; 0: no limit
    bool persistent = false;  ///< keep running after the last client leaves
    std::string pid_file;
    int verbose = 0;
    limits lim;
    /// Bytes of READ/WRITE buffers all connections together may hold
    /// (lim.max_buffered bounds each one).
    std::size_t memory_limit = 256u << 20;
    /// Set: serve only over TLS with these credentials (--tls-creds).
    std::optional<tls_settings> tls;
    /// How long a shutdown waits for connections to drain before closing them.
    std::chrono::milliseconds drain_timeout{10000};
    /// Threads serving the exports, the caller's included (more than the
    /// exports would idle: at most one per export is started).
    unsigned threads = 1;
    /// Called once, when the server listens (for --fork).
    std::function<void()> ready;
};

/// Ownership: one per process, on main()'s stack; it owns the listeners, the
/// exports' images and the extra threads, and holds its connections by
/// shared_ptr (each also holds itself while its operations are in flight).
class server {
public:
    server(boost::asio::io_context& ioc, server_options options);
    ~server();
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    /// Open the images, then listen and accept. Returns at once.
    void start();
    /// What SIGINT/SIGTERM do: stop accepting, finish requests in flight,
    /// flush and close the images. A second call while draining closes the
    /// remaining connections without waiting.
    void shutdown();
    /// 0 after a clean run, 1 when something failed.
    int exit_code() const noexcept { return exit_code_; }

private:
    using acceptor_type = boost::asio::basic_socket_acceptor<boost::asio::generic::stream_protocol>;

    /// Where the server is in its life.
    enum class phase {
        idle,      ///< constructed
        opening,   ///< opening the images
        serving,   ///< accepting clients
        draining,  ///< no new clients; waiting for connections to finish
        closing,   ///< closing the images
        stopped,   ///< done: the io_context runs out of work
    };

    struct listener {
        explicit listener(boost::asio::io_context& ioc) : acceptor(ioc) {}
        acceptor_type acceptor;
        bool accepting = false;
    };

    void wait_for_signal();
    void open_next();
    void open_image(std::size_t i, std::string path, std::optional<image_format> format, std::string backing_dir);
    void on_open(std::size_t i, std::string path, std::error_code ec, image img);
    void all_open();
    void close_next(std::size_t i);
    /// "'disk.qed'" or, with named exports, "export 'a' ('disk.qed')".
    std::string describe(std::size_t i, const std::string& path) const;
    std::error_code listen(std::string& what);
    void accept(listener& l);
    void on_accept(listener& l, boost::system::error_code ec, socket_type socket);
    void start_connection(socket_type socket);
    void on_closed(connection& c);
    bool room() const noexcept;
    void resume_accepting();
    void maybe_close_image();
    void finish();
    void error(const std::string& message) const;
    /// The executor export i's image lives on.
    boost::asio::any_io_executor executor_for(std::size_t i) const;
    void start_threads();
    /// Run stop() or abort() of `c` on the connection's thread.
    void tell(const std::shared_ptr<connection>& c, void (connection::*what)());
    void stop_threads();
    void note(const std::string& message) const;

    boost::asio::io_context& ioc_;
    server_options options_;
    // The extra contexts come first: images and sockets on them are
    // destroyed (members below) before the contexts are.
    std::vector<std::unique_ptr<boost::asio::io_context>> contexts_;
    std::vector<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guards_;
    std::vector<std::thread> threads_;
    phase phase_ = phase::idle;
    bool stop_requested_ = false;  ///< a signal came while the images were opening
    int exit_code_ = 0;
    std::vector<std::unique_ptr<export_context>> exports_;  ///< opened so far, in options_.exports order
    server_context ctx_;
    std::unique_ptr<tls_server> tls_;
    std::unique_ptr<memory_budget> budget_;
    boost::asio::signal_set signals_;
    boost::asio::steady_timer drain_timer_;
    boost::asio::steady_timer retry_timer_;
    std::vector<std::unique_ptr<listener>> listeners_;
    std::vector<std::shared_ptr<connection>> connections_;
    std::vector<socket_type> parked_;  ///< accepted while full; served when a slot frees
    std::uint64_t next_id_ = 1;
    bool served_any_ = false;
    bool wrote_pid_file_ = false;
    std::string overlay_dir_;            ///< -s: the temporary overlays' directory, removed at exit
    std::vector<std::string> overlays_;  ///< -s: the overlays created in it
};

}  // namespace qed::nbd
