// SPDX-License-Identifier: BSL-1.0
// A connection's byte stream: the socket, and after NBD_OPT_STARTTLS a TLS
// layer over it. Reads and writes go through whichever is current, so the
// handshake and the transmission phase don't care which it is.
//
// Threading: like the socket, one read and one write may be outstanding at
// once, both from the connection's strand.
#pragma once

#include <unistd.h>

#include <boost/asio/async_result.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <cassert>
#include <memory>
#include <utility>

namespace qed::nbd {

using socket_type = boost::asio::generic::stream_protocol::socket;

class nbd_stream {
public:
    using executor_type = socket_type::executor_type;
    using tls_type = boost::asio::ssl::stream<socket_type&>;

    explicit nbd_stream(socket_type socket) : socket_(std::move(socket)) {}

    executor_type get_executor() noexcept { return socket_.get_executor(); }
    socket_type& socket() noexcept { return socket_; }
    /// The TLS layer, or nullptr before STARTTLS.
    tls_type* tls() noexcept { return tls_.get(); }

    /// Move the socket to another io_context (--threads: a connection joins
    /// its export's thread once the handshake has chosen the export). Only
    /// without TLS (the TLS layer keeps timers on the executor it was made
    /// with) and with no operation outstanding.
    void move_to(const boost::asio::any_io_executor& ex, boost::system::error_code& ec) {
        assert(!tls_);  // a TLS stream cannot change executors
        const auto protocol = socket_.local_endpoint(ec).protocol();
        if (ec) return;
        socket_type moved(ex);
        const auto fd = socket_.release(ec);
        if (ec) return;
        moved.assign(protocol, fd, ec);
        if (ec) {
            ::close(fd);
            return;
        }
        socket_ = std::move(moved);
    }

    /// Put a TLS layer over the socket (no I/O yet: see async_tls_handshake).
    void start_tls(boost::asio::ssl::context& ctx) { tls_ = std::make_unique<tls_type>(socket_, ctx); }

    template <class MutableBuffers, class Token>
    auto async_read_some(const MutableBuffers& buffers, Token&& token) {
        return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
            [this](auto handler, const MutableBuffers& b) {
                if (tls_)
                    tls_->async_read_some(b, std::move(handler));
                else
                    socket_.async_read_some(b, std::move(handler));
            },
            token, buffers);
    }

    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& buffers, Token&& token) {
        return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
            [this](auto handler, const ConstBuffers& b) {
                if (tls_)
                    tls_->async_write_some(b, std::move(handler));
                else
                    socket_.async_write_some(b, std::move(handler));
            },
            token, buffers);
    }

    /// The server side of the TLS handshake; start_tls() must have been called.
    template <class Token>
    auto async_tls_handshake(Token&& token) {
        return tls_->async_handshake(boost::asio::ssl::stream_base::server, std::forward<Token>(token));
    }

private:
    socket_type socket_;
    std::unique_ptr<tls_type> tls_;
};

}  // namespace qed::nbd
